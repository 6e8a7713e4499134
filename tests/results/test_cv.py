"""The CV leaderboard: numbers against rouge-score, ranking, coverage, incomplete and stale sources."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, require_shared_data, write_workspace

from competition.data.folds import build_folds, load_folds
from competition.data.loading import load_from_config, read_split
from competition.data.predictions import load_dev, load_oof, write_fold
from competition.results.cv import bootstrap_interval
from competition.run.runner import run_candidates
from competition.workspace.config import load_config

CONFIG = """
[metric]
tokenizer = "english"
convention = "rouge-score"

[cv]
k = 3
bootstrap = 200

[candidates.lead]
kind = "lead"
max_turns = 4

[candidates.retrieval]
kind = "retrieval"
"""


@pytest.fixture(scope="module")
def english_run(tmp_path_factory):
    """English DialogSum: 600 train rows, 100 dev rows as hold-out, 50 more dev dialogues as test;
    folds built and lead + retrieval run once for the module."""
    require_shared_data()
    train = read_split(SHARED_DATA / "dialogsum-en" / "train.jsonl", "train").head(600)
    dev = read_split(SHARED_DATA / "dialogsum-en" / "dev.jsonl", "dev")
    root = write_workspace(tmp_path_factory.mktemp("english"), train, dev.iloc[100:150], dev.head(100), CONFIG)
    config = load_config(root / "competition.toml")
    build_folds(config, load_from_config(config).train)
    run_candidates(config, progress=False)
    return root


@pytest.fixture
def workspace(english_run, tmp_path):
    """A private copy of the module's workspace (tests may break it)."""
    copy = tmp_path / "ws"
    shutil.copytree(english_run, copy)
    return copy


def rouge_score_oracle(predictions: list[str], references: list[str]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    f1 = {metric: float(np.mean([s[metric].fmeasure for s in scores])) * 100 for metric in ("rouge1", "rouge2", "rougeL")}
    return {**f1, "final": float(np.mean(list(f1.values())))}


def test_cv_json_ranks_the_baselines_with_numbers_rouge_score_agrees_with(workspace, cli):
    result = cli(["cv", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    board = json.loads(result.stdout)
    assert {entry["name"] for entry in board} == {"lead", "retrieval"}
    assert board[0]["oof"]["final"] >= board[1]["oof"]["final"]
    config = load_config(workspace / "competition.toml")
    train = load_from_config(config).train.set_index("fname")
    dev = load_from_config(config).dev
    folds = load_folds(config)
    for entry in board:
        assert entry["complete"] and entry["problems"] == [] and entry["folds_done"] == entry["k"] == 3
        assert entry["coverage"] == {"missing": 0, "duplicated": 0, "extra": 0, "wrong_fold": 0}
        oof = load_oof(config, entry["name"])
        expected = rouge_score_oracle(oof["summary"].tolist(), train.loc[oof["fname"], "summary"].tolist())
        for metric in ("rouge1", "rouge2", "rougeL", "final"):
            assert entry["oof"][metric] == pytest.approx(expected[metric], abs=1e-9)
        per_fold = [rouge_score_oracle(part["summary"].tolist(), train.loc[part["fname"], "summary"].tolist())["final"]
                    for _, part in oof.groupby("fold")]
        assert entry["fold_final_mean"] == pytest.approx(np.mean(per_fold))
        assert entry["fold_final_std"] == pytest.approx(np.std(per_fold, ddof=1))
        lo, hi = entry["ci95"]
        assert lo < entry["oof"]["final"] < hi and hi - lo < 10
        dev_predictions = load_dev(config, entry["name"]).set_index("fname").loc[dev["fname"], "summary"].tolist()
        assert entry["dev_final"] == pytest.approx(rouge_score_oracle(dev_predictions, dev["summary"].tolist())["final"])
        assert entry["config_hash"] and entry["kind"] == entry["name"]
        assert entry["rows"] == len(folds)
    assert 10 < board[-1]["oof"]["final"] and board[0]["oof"]["final"] < 60

    table = cli(["cv"], cwd=workspace)
    assert table.exit_code == 0 and "OOF final" in table.output and "complete" in table.output
    only = json.loads(cli(["cv", "retrieval", "--json"], cwd=workspace).stdout)
    assert [entry["name"] for entry in only] == ["retrieval"]


def _planted(config, name: str, folds_written: list[int], extra_rows_into_fold_0: int = 0) -> None:
    """A source that copies the references: perfect where present."""
    train = load_from_config(config).train
    folds = load_folds(config)
    summaries = train.set_index("fname")["summary"]
    for fold in folds_written:
        fnames = folds[folds["fold"] == fold]["fname"].tolist()
        if fold == 0 and extra_rows_into_fold_0:
            fnames += folds[folds["fold"] == 1]["fname"].head(extra_rows_into_fold_0).tolist()
        oof = pd.DataFrame({"fname": fnames, "summary": summaries.loc[fnames].tolist()})
        write_fold(config, name, fold, oof, None, None, {"kind": "planted", "config_hash": "x"})


def test_incomplete_sources_are_marked_and_never_ranked(workspace, cli):
    config = load_config(workspace / "competition.toml")
    _planted(config, "two_folds", [0, 1])
    _planted(config, "overlapping", [0, 1, 2], extra_rows_into_fold_0=5)
    board = json.loads(cli(["cv", "--json"], cwd=workspace).stdout)
    names = [entry["name"] for entry in board]
    assert names[:2] == ["lead", "retrieval"] or names[:2] == ["retrieval", "lead"]
    by_name = {entry["name"]: entry for entry in board}
    partial = by_name["two_folds"]
    assert not partial["complete"] and partial["folds_done"] == 2 and partial["oof"]["final"] == pytest.approx(100)
    assert partial["problems"][0] == "folds 2/3" and partial["coverage"]["missing"] == 200
    overlapping = by_name["overlapping"]
    assert not overlapping["complete"] and overlapping["coverage"]["duplicated"] == 5
    assert "5 duplicated" in overlapping["problems"]
    table = cli(["cv"], cwd=workspace).output
    rows = {line.split()[1]: line for line in table.splitlines()[2:] if line[:1] in "123-"}
    assert rows["two_folds"].endswith("2/3 folds: not in competition.toml: add it back or delete its runs/ folder")
    assert rows["overlapping"].endswith("5 duplicated, 5 wrong fold: not in competition.toml: add it back or delete "
                                        "its runs/ folder")


def test_changed_data_or_folds_are_reported(workspace, cli):
    config = load_config(workspace / "competition.toml")
    build_folds(config, load_from_config(config).train, seed=1, force=True)
    board = json.loads(cli(["cv", "--json"], cwd=workspace).stdout)
    for entry in board:
        assert not entry["complete"] and entry["coverage"]["wrong_fold"] > 0
        assert "folds 0, 1, 2 were predicted on another fold split than the current folds/folds.csv" in entry["problems"]

    train = pd.read_csv(workspace / "data" / "train.csv", dtype=str, keep_default_na=False)
    train.head(599).to_csv(workspace / "data" / "train.csv", index=False)
    result = cli(["cv"], cwd=workspace)
    assert result.exit_code == 2 and "no longer matches" in result.output


def test_unknown_source_is_refused(workspace, cli):
    result = cli(["cv", "retreival"], cwd=workspace)
    assert result.exit_code == 2 and "did you mean 'retrieval'" in result.output


def test_bootstrap_interval_by_hand():
    assert bootstrap_interval(np.full(50, 7.0), 100, seed=0) == [7.0, 7.0]
    values = np.arange(100, dtype=float)
    lo, hi = bootstrap_interval(values, 500, seed=1)
    assert lo < values.mean() < hi and bootstrap_interval(values, 500, seed=1) == [lo, hi]
    # The standard error of the mean is ~2.9 here: a 95% interval is about +-5.7.
    assert 4 < (hi - lo) / 2 < 7.5


def test_bootstrap_from_cached_counts_equals_drawing_per_call(monkeypatch):
    """cv counts each row's draws once per (rows, resamples, seed) and reuses them for every source:
    the intervals equal those of drawing the same resamples per call, weighted or not."""
    from competition.results import cv

    rng = np.random.default_rng(3)
    values, weights = rng.uniform(0, 100, 700), rng.uniform(0, 2, 700)
    weights[:50] = 0.0
    cached = [bootstrap_interval(values, 400, seed=5), bootstrap_interval(values, 400, seed=5, weights=weights)]
    assert cv._resample_counts(700, 400, 5).sum(axis=1).tolist() == [700.0] * 400  # every resample draws 700 rows
    monkeypatch.setattr(cv, "COUNTS_CELLS", 0)  # too big to cache: drawn per call
    cv._resample_counts.cache_clear()
    drawn = [bootstrap_interval(values, 400, seed=5), bootstrap_interval(values, 400, seed=5, weights=weights)]
    assert np.allclose(cached, drawn, rtol=0, atol=1e-9)
    assert drawn[0] != drawn[1]  # the weights count
    assert bootstrap_interval(values, 400, seed=6) != cached[0]  # another seed, other resamples


def test_member_is_isin():
    from competition.results.cv import member

    values = pd.Series(["a", "b", "z", "a", ""])
    assert member(values, pd.Index(["a", "b", "c"])).tolist() == values.isin(["a", "b", "c"]).tolist()
    assert member(values, pd.Index(["a", "a", "z"])).tolist() == [True, False, True, True, False]


def test_stale_sources_get_a_short_coverage_cell(workspace, cli):
    """A stale source's coverage cell is short: "stale:" and the command that fixes it (for an
    ensemble of stale members, run then ensemble); every reason stays in --json."""
    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text() + '\n[ensembles.both]\nmethod = "hill-climb"\nmembers = ["lead", "retrieval"]\n',
                    encoding="utf-8")
    assert cli(["ensemble", "both"], cwd=workspace).exit_code == 0
    toml.write_text(toml.read_text().replace("max_turns = 4", "max_turns = 3"), encoding="utf-8")
    result = cli(["cv"], cwd=workspace)
    assert result.exit_code == 0, result.output
    lead = next(line for line in result.output.splitlines() if line.startswith("-  lead"))
    assert lead.endswith("  stale: competition run lead")
    both = next(line for line in result.output.splitlines() if line.startswith("-  both"))
    assert both.endswith("  stale: competition run, then competition ensemble both")
    assert "Incomplete sources: `competition cv --json` lists every reason" in result.output
    board = json.loads(cli(["cv", "--json"], cwd=workspace).stdout)
    assert any("another config of lead" in problem for problem in board[-1]["problems"])


def test_cv_ranks_by_the_score_pick_by_names(workspace, monkeypatch):
    """cv ranks by the final [cv] pick_by names (test-matched by default), complete sources first,
    as the picks do."""
    from competition.results import cv

    finals = {"memorises": (30.0, 25.0), "generalises": (28.0, 27.0), "broken": (40.0, 40.0)}

    def entry(config, name, *args, **kwargs):
        oof, matched = finals[name]
        return {"name": name, "complete": name != "broken", "oof": {"final": oof},
                "test_matched": {"final": matched}}

    monkeypatch.setattr(cv, "_entry", entry)
    monkeypatch.setattr(cv, "list_sources", lambda config: list(finals))
    config = load_config(workspace / "competition.toml")
    assert [e["name"] for e in cv.leaderboard(config)] == ["generalises", "memorises", "broken"]
    config.cv.pick_by = "oof"
    assert [e["name"] for e in cv.leaderboard(config)] == ["memorises", "generalises", "broken"]


def test_cv_shows_the_leaderboard_calibrated_expectation(workspace, cli):
    """With two logged public scores, each source's expected public score is its
    test-matched final + the median public - test-matched offset, with the band (--json and table)."""
    board = {entry["name"]: entry for entry in json.loads(cli(["cv", "--json"], cwd=workspace).stdout)}
    assert all(entry["expected_public"] is None for entry in board.values())  # nothing logged yet
    matched = {name: board[name]["test_matched"]["final"] for name in ("lead", "retrieval")}
    publics = (("lead", matched["lead"] - 2.0), ("retrieval", matched["retrieval"] - 1.0))
    for number, (name, public) in enumerate(publics, start=1):
        assert cli(["submit", name], cwd=workspace).exit_code == 0
        assert cli(["lb", "record", str(number), "--public", f"{public:.4f}"], cwd=workspace).exit_code == 0
    board = {entry["name"]: entry for entry in json.loads(cli(["cv", "--json"], cwd=workspace).stdout)}
    # offsets -2.0 and -1.0 (to 4 decimals): median -1.5, quartiles -1.75 and -1.25, IQR 0.5, fences -3.25 and +0.25
    for name in ("lead", "retrieval"):
        expected = board[name]["expected_public"]
        assert expected["expected"] == pytest.approx(matched[name] - 1.5, abs=1e-3)
        assert expected["band"] == pytest.approx([matched[name] - 3.25, matched[name] + 0.25], abs=1e-3)
        assert expected["calibration"]["n"] == 2 and expected["calibration"]["iqr"] == pytest.approx(0.5, abs=1e-3)
    table = cli(["cv"], cwd=workspace).stdout
    assert "expected public [band]" in table.splitlines()[0]
    assert "expected public = test-matched CV -1.50 (median public - CV offset of 2 submissions" in table
