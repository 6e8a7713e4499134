"""History: leaderboard recordings with corrections, CV-vs-LB correlations against scipy, the
public-noise warning, the final picks, and the PNG plot, on a made-up log."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from competition.config import load_config
from competition.errors import SubmissionError
from competition.history import (SCORE_COLOURS, label_heights, correlation, final_picks, history_report,
                                 history_rows, noise_warnings)
from competition.submission import LOG_COLUMNS, read_lb_history, read_log, record_scores

# id, source, cv, ci95 low, ci95 high, dev, public, private ("" = not recorded)
MADE_UP = [
    ("0001", "lead", 30.00, 29.0, 31.0, 29.5, 29.10, 29.30),
    ("0002", "retrieval", 32.00, 31.0, 33.0, 31.2, 31.40, 31.00),
    ("0003", "qwen", 35.00, 34.2, 35.8, 34.5, 34.00, 34.60),
    ("0004", "qwen_b", 34.50, 33.7, 35.3, 34.0, 35.90, 33.90),  # public up, CV down: noise
    ("0005", "t5", 36.00, 35.1, 36.9, 35.4, 34.50, ""),  # best CV
    ("0006", "mbr", 35.50, 34.6, 36.4, 35.0, 35.20, ""),  # best public whose CV agrees
]


@pytest.fixture
def logged(tmp_path):
    """A workspace whose submissions/log.csv holds MADE_UP."""
    (tmp_path / "competition.toml").write_text("", encoding="utf-8")
    (tmp_path / "submissions").mkdir()
    rows = []
    for number, source, cv, low, high, dev, public, private in MADE_UP:
        row = {column: "" for column in LOG_COLUMNS}
        row.update(id=number, created_at=f"2026-11-{int(number):02d}T10:00:00+00:00", file=f"{number}-{source}.csv",
                   sha256=number * 16, source=source, oof_final=f"{cv:.4f}", oof_ci95_low=f"{low:.4f}",
                   oof_ci95_high=f"{high:.4f}", dev_final=f"{dev:.4f}", public=str(public), private=str(private),
                   note=f"try {source}, again")
        rows.append(row)
    pd.DataFrame(rows, columns=LOG_COLUMNS).to_csv(tmp_path / "submissions" / "log.csv", index=False)
    return tmp_path


def _config(root):
    return load_config(root / "competition.toml")


def test_correlations_match_scipy_with_point_counts(logged):
    rows = history_rows(read_log(_config(logged)))
    cv = [r[2] for r in MADE_UP]
    public = [r[6] for r in MADE_UP]
    result = correlation(rows, "cv", "public")
    assert result["n"] == 6
    assert result["pearson"] == pytest.approx(stats.pearsonr(cv, public)[0], abs=1e-9)
    assert result["spearman"] == pytest.approx(stats.spearmanr(cv, public)[0], abs=1e-9)
    private_pairs = [(r[2], r[7]) for r in MADE_UP if r[7] != ""]
    result = correlation(rows, "cv", "private")
    assert result["n"] == 4
    assert result["pearson"] == pytest.approx(stats.pearsonr(*zip(*private_pairs))[0], abs=1e-9)
    assert result["spearman"] == pytest.approx(stats.spearmanr(*zip(*private_pairs))[0], abs=1e-9)


def test_every_gap_between_cv_dev_public_and_private(logged):
    rows = {row["id"]: row for row in history_rows(read_log(_config(logged)))}
    # 0003: cv 35.00, dev 34.5, public 34.00, private 34.60
    assert rows["0003"]["dev_minus_cv"] == pytest.approx(-0.5)
    assert rows["0003"]["public_minus_cv"] == pytest.approx(-1.0)
    assert rows["0003"]["public_minus_dev"] == pytest.approx(-0.5)
    assert rows["0003"]["private_minus_cv"] == pytest.approx(-0.4)
    assert rows["0003"]["private_minus_dev"] == pytest.approx(0.1)
    assert rows["0003"]["private_minus_public"] == pytest.approx(0.6)
    # 0005 has no private score yet: its private gaps are unknown, not zero.
    assert rows["0005"]["public_minus_dev"] == pytest.approx(34.5 - 35.4)
    assert rows["0005"]["private_minus_cv"] is None and rows["0005"]["private_minus_public"] is None


def test_spearman_averages_ties_and_small_samples_say_nothing():
    rows = [{"cv": cv, "public": public} for cv, public in [(1, 5), (2, 5), (2, 7), (4, 6), (5, 9)]]
    result = correlation(rows)
    x, y = zip(*[(r["cv"], r["public"]) for r in rows])
    assert result["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert correlation(rows[:2]) == {"n": 2, "pearson": None, "spearman": None}
    constant = [{"cv": 1.0, "public": p} for p in (1.0, 2.0, 3.0)]
    assert correlation(constant)["pearson"] is None


def test_public_gain_without_cv_gain_is_flagged(logged):
    rows = history_rows(read_log(_config(logged)))
    warnings = noise_warnings(rows)
    assert len(warnings) == 1
    assert "#0004" in warnings[0] and "#0003" in warnings[0]
    assert "+1.9000" in warnings[0] and "-0.5000" in warnings[0]


def test_final_picks_best_cv_and_best_public_whose_cv_agrees(logged):
    picks = final_picks(history_rows(read_log(_config(logged))))
    assert picks["best_cv"]["id"] == "0005"
    # #0004 has the best public score but its CV (34.5) is below #0005's 95% interval (35.1).
    assert picks["cv_threshold"] == pytest.approx(35.1)
    assert picks["best_public_agreeing"]["id"] == "0006"
    assert "not recommended: #0004" in picks["advice"]


def test_final_picks_follow_the_test_matched_cv(logged):
    """With test-matched finals logged, pick_by "test_matched" ranks by them (and their interval),
    while "oof" keeps the OOF order; an older log without the columns reads them as unknown."""
    log_path = logged / "submissions" / "log.csv"
    log = pd.read_csv(log_path, dtype=str, keep_default_na=False)
    # t5 (best OOF) memorised near-duplicates: its test-matched final falls below qwen's and mbr's.
    matched = {"0003": (34.9, 34.0, 35.8), "0005": (33.0, 32.0, 34.0), "0006": (35.2, 34.4, 36.0)}
    for number, (final, low, high) in matched.items():
        where = log["id"] == number
        log.loc[where, ["matched_final", "matched_ci95_low", "matched_ci95_high"]] = [str(final), str(low), str(high)]
    log.to_csv(log_path, index=False)
    rows = history_rows(read_log(_config(logged)))
    picks = final_picks(rows, pick_by="test_matched")
    assert picks["best_cv"]["id"] == "0006" and picks["cv_threshold"] == pytest.approx(34.4)
    assert picks["best_public_agreeing"]["id"] == "0004"  # OOF 34.5 >= 34.4 (no test-matched logged)
    assert picks["advice"].startswith("pick 1 (best test-matched CV): #0006 mbr test-matched CV 35.2000")
    assert final_picks(rows, pick_by="oof")["best_cv"]["id"] == "0005"

    older = log.drop(columns=["matched_final", "matched_ci95_low", "matched_ci95_high", "dev_novel_final"])
    older.to_csv(log_path, index=False)
    rows = history_rows(read_log(_config(logged)))
    assert all(row["matched"] is None for row in rows) and final_picks(rows)["best_cv"]["id"] == "0005"


def test_pick_two_advice_says_what_the_log_lacks(logged):
    rows = history_rows(read_log(_config(logged)))
    only_best = [row for row in rows if row["id"] == "0005"]
    assert "no other submission yet" in final_picks(only_best)["advice"]
    unrecorded = [dict(row, public=None) if row["id"] == "0006" else row for row in rows if row["id"] in ("0005", "0006")]
    assert "#0006 mbr has CV >= 35.1000 but no public score: record it" in final_picks(unrecorded)["advice"]
    low = [row for row in rows if row["id"] in ("0001", "0005")]
    assert "take the next best CV: #0001 lead 30.0000" in final_picks(low)["advice"]


def test_record_validates_and_keeps_corrections(logged):
    config = _config(logged)
    record_scores(config, "6", public=35.3)  # a typo fixed: 35.20 -> 35.30
    row = record_scores(config, "0006", private=34.95)
    assert row["public"] == "35.3000" and row["private"] == "34.9500"
    log = read_log(config)
    assert log.loc[log["id"] == "0006", ["public", "private"]].values.tolist() == [["35.3000", "34.9500"]]
    history = read_lb_history(config)
    assert history[["id", "public", "previous_public", "private"]].values.tolist() == [
        ["0006", "35.3000", "35.2", ""], ["0006", "", "", "34.9500"]]
    with pytest.raises(SubmissionError, match="outside 0-100"):
        record_scores(config, "1", public=101)
    with pytest.raises(SubmissionError, match="outside 0-100"):
        record_scores(config, "1", private=-0.5)
    with pytest.raises(SubmissionError, match="no submission '42'"):
        record_scores(config, "42", public=30)
    with pytest.raises(SubmissionError, match="nothing to record"):
        record_scores(config, "1")
    assert len(read_lb_history(config)) == 2  # refused recordings leave no trace


def test_cli_record_history_and_plot(logged, cli):
    result = cli(["lb", "record", "5", "--public", "34.7", "--private", "35.8"], cwd=logged)
    assert result.exit_code == 0, result.output
    assert "Recorded submission 0005" in result.output
    assert cli(["lb", "record", "5", "--public", "250"], cwd=logged).exit_code == 2

    result = cli(["history", "--json", "--sort", "public"], cwd=logged)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [row["id"] for row in report["submissions"]] == ["0004", "0006", "0005", "0003", "0002", "0001"]
    assert report["correlation"]["private"]["n"] == 5
    row = next(r for r in report["submissions"] if r["id"] == "0005")
    assert row["public_minus_cv"] == pytest.approx(34.7 - 36.0)
    assert row["private_minus_public"] == pytest.approx(35.8 - 34.7)
    assert row["private_minus_cv"] == pytest.approx(35.8 - 36.0)
    assert row["public_minus_dev"] == pytest.approx(34.7 - 35.4)

    for bad, message in ((logged / "history.txt", "does not end in .png"),
                         (logged / "missing" / "history.png", "missing' does not exist")):
        refused = cli(["history", "--plot", bad], cwd=logged)  # before: a PNG under .txt, folders made silently
        assert refused.exit_code == 2 and message in refused.output and not bad.exists()
        assert len(refused.output.strip().splitlines()) == 1
    (logged / "plots").mkdir()
    plot = logged / "plots" / "history.png"
    result = cli(["history", "--plot", plot], cwd=logged)
    assert result.exit_code == 0, result.output
    assert "CV vs public: Pearson" in result.output and "n=6" in result.output
    header, *lines = result.output.splitlines()
    assert header.split()[7:13] == ["dev-CV", "pub-CV", "pub-dev", "priv-CV", "priv-dev", "priv-pub"]
    row_0005 = next(line for line in lines if line.startswith("0005"))
    # cv 36.00, dev 35.40, public 34.70, private 35.80 (recorded above)
    assert row_0005.split()[6:12] == ["-0.6000", "-1.3000", "-0.7000", "-0.2000", "+0.4000", "+1.1000"]
    assert "WARNING: #0004" in result.output
    assert "pick 1 (best CV): #0005" in result.output and "pick 2" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_history_of_an_empty_workspace(tmp_path, cli):
    (tmp_path / "competition.toml").write_text("", encoding="utf-8")
    result = cli(["history"], cwd=tmp_path)
    assert result.exit_code == 0 and "No submissions yet" in result.output
    report = history_report(_config(tmp_path))
    assert report["submissions"] == [] and report["picks"]["best_cv"] is None


def test_plot_labels_do_not_overlap_and_colours_are_one_per_score():
    """Before, two submissions with nearly the same scores printed their ids over each other, and
    orange meant private in one panel and dev in the other."""
    heights = label_heights([(30.0, 31.0), (30.01, 31.002), (30.02, 31.001), (33.0, 31.0)], height=0.1)
    assert heights[0] == 31.0 and heights[3] == 31.0  # alone: at the point
    assert heights[1] >= 31.1 and heights[2] >= heights[1] + 0.1 - 1e-9  # stacked clear of each other
    assert len(set(SCORE_COLOURS.values())) == len(SCORE_COLOURS)
