"""`competition score`: prediction files against reference files joined by fname, the official
final on real dev rows, --by breakdowns, multi-reference JSONL, refusals and empty predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import first_turns

from competition.data import read_split, references
from competition.metric import METRICS, RougeScorer


@pytest.fixture
def dev_predictions(tmp_path, shared_data):
    """First-turn predictions for dialogsum-ko/dev.csv, written as fname,summary."""
    dev = read_split(shared_data / "dialogsum-ko" / "dev.csv", "dev")
    path = tmp_path / "first_turn.csv"
    pd.DataFrame({"fname": dev["fname"], "summary": first_turns(dev)}).to_csv(path, index=False)
    return path, shared_data / "dialogsum-ko" / "dev.csv", dev


def test_score_cli_json_gives_the_official_final(cli, tmp_path, dev_predictions):
    predictions, refs, dev = dev_predictions
    result = cli(["score", predictions, "--refs", refs, "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    expected = RougeScorer("kiwi", "official").score(first_turns(dev), references(dev))
    assert report["rows"] == 499
    assert report["final"] == pytest.approx(expected.final, abs=1e-9)
    assert report["final"] == pytest.approx(15.78, abs=0.005)
    # One unit everywhere: R1/R2/RL F1 x 100, like the final (before, 0.2x next to a final of 15.78).
    assert report["rouge1"]["f1"] == pytest.approx(expected.f1["rouge1"] * 100, abs=1e-10)
    assert report["final"] == pytest.approx(np.mean([report[m]["f1"] for m in METRICS]), abs=1e-9)


def test_score_cli_rouge_score_convention_and_table(cli, tmp_path, dev_predictions):
    predictions, refs, _ = dev_predictions
    result = cli(["score", predictions, "--refs", refs, "--convention", "rouge-score", "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["final"] == pytest.approx(14.72, abs=0.005)
    table = cli(["score", predictions, "--refs", refs], cwd=tmp_path)
    assert table.exit_code == 0, table.output
    assert "15.78" in table.output and "final" in table.output


def test_score_cli_by_topic_breaks_down(cli, tmp_path, dev_predictions):
    predictions, refs, dev = dev_predictions
    result = cli(["score", predictions, "--refs", refs, "--by", "topic", "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["by"]) == set(dev["topic"])
    assert sum(part["rows"] for part in report["by"].values()) == 499
    weighted = sum(part["final"] * part["rows"] for part in report["by"].values()) / 499
    assert weighted == pytest.approx(report["final"], abs=1e-9)
    table = cli(["score", predictions, "--refs", refs, "--by", "topic"], cwd=tmp_path)
    assert table.exit_code == 0 and dev["topic"].iloc[0] in table.output


def test_score_cli_rejects_missing_and_extra_ids(cli, tmp_path, korean_rows):
    refs = tmp_path / "refs.csv"
    korean_rows.to_csv(refs, index=False)
    predictions = tmp_path / "preds.csv"
    frame = pd.DataFrame({"fname": list(korean_rows["fname"][2:]) + ["zz_1"], "summary": "요약"})
    frame.to_csv(predictions, index=False)
    result = cli(["score", predictions, "--refs", refs], cwd=tmp_path)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "2 reference id(s) have no prediction" in message and "f_0" in message
    assert "1 predicted id(s) are not in" in message and "zz_1" in message


def test_score_cli_rejects_unknown_by_column(cli, tmp_path, korean_rows):
    refs = tmp_path / "refs.csv"
    korean_rows.to_csv(refs, index=False)
    predictions = tmp_path / "preds.csv"
    korean_rows[["fname", "summary"]].to_csv(predictions, index=False)
    result = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--by", "speaker"],
                 cwd=tmp_path)
    assert result.exit_code == 2 and "--by speaker" in result.output
    ok = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--json"], cwd=tmp_path)
    assert json.loads(ok.output)["final"] == pytest.approx(100 * (1 - 5e-9), abs=1e-9)


def test_score_cli_multi_reference_jsonl(cli, tmp_path):
    refs = tmp_path / "refs.jsonl"
    rows = [{"fname": "a", "dialogue": "d", "summary1": "x y z", "summary2": "p q r", "summary3": "x y r"},
            {"fname": "b", "dialogue": "d", "summary1": "m n", "summary2": "m n"}]
    refs.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    predictions = tmp_path / "preds.csv"
    pd.DataFrame({"fname": ["b", "a"], "summary": ["m n", "x y z"]}).to_csv(predictions, index=False)
    args = ["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--convention", "rouge-score",
            "--json"]
    mean = json.loads(cli(args, cwd=tmp_path).output)
    # Row a: F1 vs its three references 1, 0, 2/3 (R1) -> mean 5/9; row b: 1.
    assert mean["rouge1"]["f1"] == pytest.approx((5 / 9 + 1) / 2 * 100, abs=1e-10)
    best = json.loads(cli(args + ["--multi-ref", "max"], cwd=tmp_path).output)
    assert best["final"] == pytest.approx(100.0, abs=1e-12)


def test_score_cli_counts_empty_predictions_and_strict_refuses_them(cli, tmp_path, korean_rows):
    """Before, empty and NaN summaries scored silently."""
    refs = tmp_path / "refs.csv"
    korean_rows.to_csv(refs, index=False)
    predictions = tmp_path / "preds.csv"
    frame = korean_rows[["fname", "summary"]].copy()
    frame.loc[[1, 4], "summary"] = ""
    frame.loc[6, "summary"] = None  # written as an empty field, read back as "" (a NaN in pandas)
    frame.to_csv(predictions, index=False)
    result = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--json"], cwd=tmp_path)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["empty_predictions"] == 3
    assert "warning: 3 of 12 predictions in" in result.stderr and "--strict" in result.stderr
    strict = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--strict"], cwd=tmp_path)
    assert strict.exit_code == 2 and "3 of 12 predictions are empty (e.g. f_1, f_4, f_6)" in strict.output

