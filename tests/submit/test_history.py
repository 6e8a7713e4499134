"""History: leaderboard recordings with corrections, CV-vs-LB correlations against scipy, the
public-noise warning, the final picks, and the PNG plot, on a made-up log."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from competition.errors import SubmissionError
from competition.submit.history import (SCORE_COLOURS, label_heights, correlation, final_picks, history_report,
                                        history_rows, noise_warnings, public_calibration, sort_rows)
from competition.submit.submission import LOG_COLUMNS, read_lb_history, read_log, record_scores
from competition.workspace.config import load_config

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
    refused = cli(["lb", "record", "5", "--public", "250"], cwd=logged)
    assert refused.exit_code == 2 and "--public 250.0 is outside 0-100" in refused.output
    assert float(read_log(_config(logged)).set_index("id").loc["0005", "public"]) == 34.7  # 250 not recorded

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
    # No test-matched final logged: CV is the OOF final, marked "*", and nothing calibrates it.
    assert result.output.startswith("CV column: OOF CV ([cv] pick_by = 'test_matched'); * = OOF final")
    _, header, *lines = result.output.splitlines()
    assert header.split()[9:15] == ["dev-CV", "pub-CV", "pub-dev", "priv-CV", "priv-dev", "priv-pub"]
    row_0005 = next(line for line in lines if line.startswith("0005"))
    # cv 36.00, dev 35.40, public 34.70, private 35.80 (recorded above); no OOF beside it, no expected
    assert row_0005.split()[2:12] == ["36.00*", "35.40", "34.70", "35.80", "-0.6000", "-1.3000", "-0.7000",
                                      "-0.2000", "+0.4000", "+1.1000"]
    assert "expected public: needs 2 submissions with a public score and a OOF CV" in result.output
    assert "WARNING: #0004" in result.output
    assert "pick 1 (best CV): #0005" in result.output and "pick 2" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_history_of_an_empty_workspace(tmp_path, cli):
    (tmp_path / "competition.toml").write_text("", encoding="utf-8")
    result = cli(["history"], cwd=tmp_path)
    assert result.exit_code == 0 and "No submissions yet" in result.output
    report = history_report(_config(tmp_path))
    assert report["submissions"] == [] and report["picks"]["best_cv"] is None


def test_plot_labels_do_not_overlap_and_colours_are_one_per_score(logged):
    """Ids of submissions with nearly the same scores are stacked clear of each other; in the drawn
    figure each score has one colour, the same in both panels, and no two scores share one."""
    from matplotlib.colors import to_hex

    from competition.submit.history import calibrate_rows, draw_history

    heights = label_heights([(30.0, 31.0), (30.01, 31.002), (30.02, 31.001), (33.0, 31.0)], height=0.1)
    assert heights[0] == 31.0 and heights[3] == 31.0  # alone: at the point
    assert heights[1] >= 31.1 and heights[2] >= heights[1] + 0.1 - 1e-9  # stacked clear of each other

    _with_matched(logged, {"0001": 30.1, "0002": 32.5, "0003": 34.9, "0004": 35.3, "0005": 35.55}, drop=("0006",))
    rows = history_rows(read_log(_config(logged)))
    calibration = public_calibration(rows)
    scores = ["test-matched CV", "OOF final", "dev final", "public", "private", "expected public"]
    colours: dict[str, set[str]] = {label: set() for label in scores}
    for axis in draw_history(calibrate_rows(rows, calibration), calibration).axes:
        for line in axis.lines:
            if line.get_label() in colours:
                colours[line.get_label()].add(to_hex(line.get_color()))
        for points in axis.collections:
            if points.get_label() in colours:
                colours[points.get_label()].add(to_hex(points.get_facecolor()[0]))
    assert all(len(colours[label]) == 1 for label in scores), colours  # public and private: in both panels
    assert len({colours[label].pop() for label in scores}) == len(scores)


def _with_matched(logged, matched: dict[str, float], drop: tuple[str, ...] = ()) -> None:
    """Write test-matched finals (interval +-0.8) into the made-up log, and drop rows."""
    log_path = logged / "submissions" / "log.csv"
    log = pd.read_csv(log_path, dtype=str, keep_default_na=False)
    for number, final in matched.items():
        log.loc[log["id"] == number, ["matched_final", "matched_ci95_low", "matched_ci95_high"]] = \
            [f"{final:.4f}", f"{final - 0.8:.4f}", f"{final + 0.8:.4f}"]
    log[~log["id"].isin(drop)].to_csv(log_path, index=False)


def test_one_cv_warns_sorts_and_correlates_by_pick_by(logged):
    """History warns on the change in the [cv] pick_by score, the CV the picks use (#0004 gains on
    test-matched while its OOF final drops: no warning under test_matched, one under oof), shows
    the other CV beside it, and sorts and correlates by the pick_by score too."""
    # #0004's test-matched final rose over #0003's (34.1 -> 34.4) while its OOF fell (35.0 -> 34.5);
    # #0006's public gain over #0004 comes with a test-matched fall (34.4 -> 34.35), OOF up (+1.0).
    _with_matched(logged, {"0001": 29.0, "0002": 31.0, "0003": 34.1, "0004": 34.4, "0005": 33.0, "0006": 34.35})
    log_path = logged / "submissions" / "log.csv"
    log = pd.read_csv(log_path, dtype=str, keep_default_na=False)
    log.loc[log["id"] == "0006", "public"] = "36.0"
    log.to_csv(log_path, index=False)
    rows = history_rows(read_log(_config(logged)), "test_matched")
    warnings = noise_warnings(rows)
    assert not any(warning.startswith("#0004") for warning in warnings)
    assert len(warnings) == 1 and warnings[0].startswith("#0006 (mbr) raised the best public score by +0.1000 over "
                                                         "#0004 while its test-matched CV changed -0.0500 "
                                                         "(OOF final +1.0000)")
    assert [row["id"] for row in sort_rows(rows, "cv")] == ["0004", "0006", "0003", "0005", "0002", "0001"]
    assert rows[3]["cv"] == 34.4 and rows[3]["oof"] == 34.5 and rows[3]["public_minus_cv"] == pytest.approx(1.5)
    assert correlation(rows)["pearson"] == pytest.approx(stats.pearsonr([29.0, 31.0, 34.1, 34.4, 33.0, 34.35],
                                                                        [29.1, 31.4, 34.0, 35.9, 34.5, 36.0])[0])
    oof_rows = history_rows(read_log(_config(logged)), "oof")
    assert any(warning.startswith("#0004 (qwen_b) raised the best public score by +1.9000 over #0003 while its "
                                  "OOF CV changed -0.5000 (test-matched final +0.3000)")
               for warning in noise_warnings(oof_rows))


def test_expected_public_by_hand_for_three_submissions(logged):
    """Offsets public - test-matched of #0001-#0003: 29.10 - 30.30 = -1.20,
    31.40 - 32.30 = -0.90, 34.00 - 35.50 = -1.50. Median -1.20; quartiles (linear) -1.35 and
    -1.05, IQR 0.30; fences -1.35 - 3 x 0.30 = -2.25 and -1.05 + 0.90 = -0.15. A source with
    test-matched 33.00 expects 31.80 on the public board, band 30.75-32.85."""
    _with_matched(logged, {"0001": 30.3, "0002": 32.3, "0003": 35.5, "0005": 33.0},
                  drop=("0004", "0006"))
    log_path = logged / "submissions" / "log.csv"
    log = pd.read_csv(log_path, dtype=str, keep_default_na=False)
    log.loc[log["id"] == "0005", "public"] = ""  # not scored yet
    log.to_csv(log_path, index=False)
    report = history_report(_config(logged))
    calibration = report["calibration"]
    assert calibration["n"] == 3 and calibration["offsets"] == pytest.approx({"0001": -1.2, "0002": -0.9, "0003": -1.5})
    assert calibration["median"] == pytest.approx(-1.2) and calibration["iqr"] == pytest.approx(0.3)
    assert (calibration["low"], calibration["high"]) == pytest.approx((-2.25, -0.15))
    row = next(row for row in report["submissions"] if row["id"] == "0005")
    assert row["expected_public"]["expected"] == pytest.approx(31.8)
    assert row["expected_public"]["band"] == pytest.approx([30.75, 32.85])
    assert not any(row["lb_outlier"] for row in report["submissions"])  # three offsets: nothing can be outside
    assert public_calibration(history_rows(read_log(_config(logged)))[:1]) is None  # one score: no calibration


def test_a_public_score_outside_its_band_is_flagged(logged):
    """Five offsets -1.0, -1.1, -0.9, -1.05, +0.6 (#0004: public far above what its CV predicts):
    Q1 -1.05, Q3 -0.9, IQR 0.15, fences -1.5 and -0.45: #0004 is flagged, in the report and the table."""
    _with_matched(logged, {"0001": 30.1, "0002": 32.5, "0003": 34.9, "0004": 35.3, "0005": 35.55}, drop=("0006",))
    report = history_report(_config(logged))
    assert report["calibration"]["median"] == pytest.approx(-1.0)
    assert (report["calibration"]["low"], report["calibration"]["high"]) == pytest.approx((-1.5, -0.45))
    assert [row["id"] for row in report["submissions"] if row["lb_outlier"]] == ["0004"]
    assert any(warning.startswith("#0004 (qwen_b) public 35.9000 is outside its expected band [33.8000, 34.8500]")
               for warning in report["warnings"])


def test_cli_history_names_its_cv_and_shows_the_expected_public(logged, cli):
    _with_matched(logged, {"0001": 30.1, "0002": 32.5, "0003": 34.9, "0004": 35.3, "0005": 35.55}, drop=("0006",))
    result = cli(["history"], cwd=logged)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("CV column: test-matched CV ([cv] pick_by = 'test_matched'); OOF column")
    assert lines[1].split()[:9] == ["id", "source", "CV", "OOF", "dev", "public", "expected", "band", "private"]
    row_0004 = next(line for line in lines if line.startswith("0004")).split()
    assert row_0004[2:8] == ["35.30", "34.50", "34.00", "35.90!", "34.30", "33.80-34.85"]
    assert "test-matched CV vs public: Pearson" in result.output
    assert "expected public = test-matched CV -1.00 (median public - CV offset of 5 submissions" in result.output
    report = json.loads(cli(["history", "--json"], cwd=logged).stdout)
    assert report["cv_label"] == "test-matched CV" and report["calibration"]["n"] == 5
    assert report["submissions"][3]["expected_public"]["expected"] == pytest.approx(34.3)


def _images():
    """docs/images.py, the script that redraws the guide's pictures."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "images.py"
    spec = importlib.util.spec_from_file_location("docs_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("count", [1, 20])
def test_history_plot_is_readable_for_1_and_20_submissions(tmp_path, count):
    """The plot is a PNG for one submission and for twenty; with the board 8 points under CV the
    y axis fits the points (no y = x line stretching it), the legend covers no point, and the id
    labels are not drawn in the public or private colours."""
    import matplotlib.pyplot as plt

    from competition.submit.history import draw_history, plot_history

    images = _images()
    config = load_config(images.made_up_workspace(tmp_path, count) / "competition.toml")
    report = history_report(config)
    path = plot_history(report["submissions"], tmp_path / "history.png", report["calibration"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report["calibration"] is None) == (count == 1)

    # The leaderboard 8 points under CV (public and private alike).
    far = [dict(row, **{key: None if row[key] is None else row[key] - 8.0 for key in ("public", "private")})
           for row in report["submissions"]]
    calibration = report["calibration"] and dict(report["calibration"], **{
        key: report["calibration"][key] - 8.0 for key in ("median", "low", "high")})
    figure = draw_history(far, calibration)
    figure.canvas.draw()
    scatter = figure.axes[0]
    board = [row[key] for row in far for key in ("public", "private") if row[key] is not None]
    low, high = scatter.get_ylim()
    assert high - low <= max(max(board) - min(board), 1.0) * 1.3  # fitted to the points, not to y = x
    renderer = figure.canvas.get_renderer()
    legend = scatter.get_legend().get_window_extent(renderer)
    for row in far:
        if row["public"] is not None:
            x, y = scatter.transData.transform((row["cv"], row["public"]))
            assert not legend.contains(x, y)  # no point under the legend
    labels = [text for text in scatter.texts if text.get_text().isdigit()]
    assert labels and all(text.get_color() not in (SCORE_COLOURS["public"], SCORE_COLOURS["private"])
                          for text in labels)
    plt.close(figure)


def test_docs_images_script_draws_every_picture(tmp_path):
    drawn = _images().main(tmp_path)
    assert [path.name for path in drawn] == ["history-1.png", "history-3.png", "history-20.png", "similarity.png"]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000 for path in drawn)
