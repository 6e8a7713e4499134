"""`competition score`: prediction files against reference files joined by fname, the official
final on real dev rows, --by breakdowns, multi-reference JSONL, refusals and empty predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import first_turns

from competition.data.loading import read_split, references
from competition.text.metric import METRICS, RougeScorer


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
    # One unit everywhere: R1/R2/RL F1 x 100, like the final.
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
    """Empty and NaN summaries are counted and warned about; --strict refuses them."""
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



@pytest.fixture
def lead_workspace(tmp_path, korean_rows, cli):
    """12 Korean rows in 3 folds, lead run on every fold (whitespace tokens keep it quick)."""
    from conftest import write_workspace

    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, None, config=(
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n'
        '[candidates.lead]\nkind = "lead"\nmax_turns = 2\n'))
    for command in (["folds", "build"], ["run", "lead"]):
        assert cli(command, cwd=root).exit_code == 0
    return root


def test_one_fold_scores_the_rows_it_covers_when_asked(cli, lead_workspace, korean_rows):
    """One fold's OOF file against all training references is refused with the count of rows it
    does not cover and the way out: --subset scores just the rows it predicts."""
    fold_0 = pd.read_csv(lead_workspace / "runs" / "lead" / "fold_0" / "oof.csv", dtype=str, keep_default_na=False)
    args = ["score", "runs/lead/fold_0/oof.csv", "--refs", "data/train.csv", "--by", "topic"]
    refused = cli(args, cwd=lead_workspace)
    left_out = len(korean_rows) - len(fold_0)
    assert refused.exit_code == 2 and f"{left_out} reference id(s) have no prediction" in refused.output
    assert f"pass --subset to score only the {len(fold_0)} reference rows predicted" in refused.output
    result = cli(args + ["--subset", "--json"], cwd=lead_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == len(fold_0) and report["left_out"] == left_out
    assert f"{left_out} reference rows have no prediction and were left out" in result.stderr
    covered = korean_rows[korean_rows["fname"].isin(fold_0["fname"])]
    expected = RougeScorer("whitespace", "official").score(
        fold_0.set_index("fname").loc[covered["fname"], "summary"].tolist(), references(covered))
    assert report["final"] == pytest.approx(expected.final, abs=1e-9)
    assert sum(part["rows"] for part in report["by"].values()) == len(fold_0)
    extra = lead_workspace / "extra.csv"
    pd.concat([fold_0, pd.DataFrame({"fname": ["zz_1"], "summary": ["요약"]})]).to_csv(extra, index=False)
    still_refused = cli(["score", extra, "--refs", "data/train.csv", "--subset"], cwd=lead_workspace)
    assert still_refused.exit_code == 2 and "1 predicted id(s) are not in" in still_refused.output


def test_a_source_name_scores_its_whole_oof_as_cv_does(cli, lead_workspace, korean_rows):
    """`competition score NAME` is the source's OOF, every fold, as one file."""
    result = cli(["score", "lead", "--json"], cwd=lead_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    board = {entry["name"]: entry for entry in json.loads(cli(["cv", "--json"], cwd=lead_workspace).stdout)}
    assert report["rows"] == len(korean_rows) and report["left_out"] == 0
    assert report["final"] == pytest.approx(board["lead"]["oof"]["final"], abs=1e-9)
    table = cli(["score", "lead", "--by", "topic"], cwd=lead_workspace)
    assert table.exit_code == 0 and korean_rows["topic"].iloc[0] in table.output
    unknown = cli(["score", "leed"], cwd=lead_workspace)
    assert unknown.exit_code == 2 and "neither a file nor a source under runs/ (sources: lead)" in unknown.output
    no_refs = cli(["score", "runs/lead/fold_0/oof.csv"], cwd=lead_workspace)
    assert no_refs.exit_code == 2 and "--refs" in no_refs.output
