"""`make submit` (competition pipeline): from the competition files to a valid leaderboard CSV and
one log row, on the real Korean data (dev as train) and on a tiny workspace."""
from __future__ import annotations

import io
import re

import pandas as pd
import pytest

from competition.results.cv import leaderboard
from competition.submit.pipeline import with_data_dir
from competition.text.turns import lead_text
from competition.workspace.config import load_config
from conftest import write_workspace

FAST_CANDIDATES = """
[cv]
k = 3
bootstrap = 100

[candidates.lead]
kind = "lead"

[candidates.retrieval]
kind = "retrieval"
"""


def _check_submission(root, test, train):
    """The one logged submission holds its source's test output, row for row, and that output is
    what the source's kind writes (the sources here are model-free: see _written_by)."""
    log = pd.read_csv(root / "submissions" / "log.csv", dtype=str, keep_default_na=False)
    assert len(log) == 1
    row = log.iloc[0]
    content = (root / "submissions" / row["file"]).read_bytes()
    frame = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)
    assert frame.columns.tolist() == ["fname", "summary"]
    assert frame["fname"].tolist() == test["fname"].tolist()
    assert frame["summary"].tolist() == _source_test_output(root, row["source"], test)
    _written_by(row["source"], frame["summary"].tolist(), test, train)
    return row


def _source_test_output(root, source: str, test) -> list[str]:
    """runs/SOURCE/test.csv's summaries in the order of the test rows."""
    chosen = pd.read_csv(root / "runs" / source / "test.csv", dtype=str, keep_default_na=False)
    return chosen.set_index("fname").loc[test["fname"], "summary"].tolist()


def _written_by(kind: str, summaries: list[str], test, train) -> None:
    """Each summary is the dialogue's first turns (lead, N tuned in 1..6) or a training summary with
    its #PersonN# speakers renamed to the new dialogue's (retrieval)."""
    if kind == "lead":
        assert all(any(summary == lead_text(dialogue, turns) for turns in range(1, 7))
                   for summary, dialogue in zip(summaries, test["dialogue"]))
    else:
        assert kind == "retrieval", kind
        known = {_untagged(summary) for summary in train["summary"]}
        assert all(_untagged(summary) in known for summary in summaries)


def _untagged(summary: str) -> str:
    return re.sub(r"#Person\d+#", "#", summary)


@pytest.mark.slow
def test_pipeline_on_the_real_korean_data(shared_data, tmp_path, cli):
    korean = shared_data / "dialogsum-ko"
    train = pd.read_csv(korean / "dev.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(korean / "test.csv", dtype=str, keep_default_na=False)
    write_workspace(tmp_path, train, test, None, FAST_CANDIDATES)
    # The files live elsewhere than [data] dir: --data (make submit DATA=...) must be what is read.
    (tmp_path / "data").rename(tmp_path / "competition-files")

    result = cli(["pipeline", "--data", tmp_path / "competition-files"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "folds" / "folds.csv").exists()
    row = _check_submission(tmp_path, test, train)
    for source in ("lead", "retrieval"):  # the chosen one is checked above; both outputs are checked here
        _written_by(source, _source_test_output(tmp_path, source, test), test, train)
    config = with_data_dir(load_config(tmp_path / "competition.toml"), tmp_path / "competition-files")
    board = leaderboard(config)
    assert [entry["name"] for entry in board if entry["complete"]] and {e["name"] for e in board} == {"lead", "retrieval"}
    assert row["source"] == board[0]["name"]  # the best by [cv] pick_by (the test-matched final)
    assert float(row["oof_final"]) == pytest.approx(board[0]["oof"]["final"], abs=1e-4)
    assert "CV leaderboard" in result.output and f"{board[0]['oof']['final']:.4f}" in result.output
    lines = result.output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("source ")))
    # The table names the score that ranks it ([cv] pick_by) first, before the OOF final.
    assert lines[header].split()[3:6] == ["test-matched", "(ranks)", "OOF"]
    best = board[0]
    assert lines[header + 2].split()[:4] == [best["name"], best["kind"], f"{best['folds_done']}/{best['k']}",
                                             f"{best['test_matched']['final']:.2f}"]  # as the cv table
    assert 5 < float(row["oof_final"]) < 60  # ROUGE finals of simple baselines on this data
    assert row["file"] in result.output and row["sha256"] in result.output  # the new log row


def test_pipeline_skips_cuda_candidates_unless_required(tmp_path, korean_rows, cli, monkeypatch):
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    write_workspace(tmp_path, korean_rows, test, None, """
[metric]
tokenizer = "whitespace"

[cv]
k = 3
bootstrap = 100

[submit]
source = "lead"

[candidates.lead]
kind = "lead"

[candidates.big]
kind = "qlora"
model = "models/not-downloaded"
require_cuda = true
""")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the check is about CPU-only machines
    result = cli(["pipeline", "--require-all"], cwd=tmp_path)
    assert result.exit_code == 2 and "'big' needs CUDA" in result.output
    assert not (tmp_path / "submissions" / "log.csv").exists()

    result = cli(["pipeline"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "big: skipped (candidate 'big' needs CUDA" in result.output
    row = _check_submission(tmp_path, test, korean_rows)
    assert row["source"] == "lead" and row["note"] == "make submit"

    # A second `make submit` with nothing changed reuses the runs and logs nothing new.
    again = cli(["pipeline"], cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "nothing new logged" in again.output and "(already logged)" in again.output
    assert _check_submission(tmp_path, test, korean_rows)["sha256"] == row["sha256"]
