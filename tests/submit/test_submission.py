"""Submissions: the leaderboard CSV round-trips hostile summaries byte for byte, every refusal names
its rows, the log survives 20 parallel submits, and diff compares two files."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing

import pandas as pd
import pytest

from competition.errors import SubmissionError
from competition.submit.submission import LOG_COLUMNS, leaderboard_csv, read_log, submit
from competition.workspace.config import load_config

HOSTILE = [
    "#Person1#은 우산을, 그리고 모자를 찾습니다.",
    '#Person2#는 "괜찮아요"라고 말합니다.',
    "첫 줄\n둘째 줄",
    "윈도 줄바꿈\r\n다음",
    "홀로 있는\r캐리지 리턴",
    '"따옴표로 시작", 쉼표, 그리고 ""두 번""',
    " 앞뒤 공백 ",
    ",",
]


def _read_with_pandas(content: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)


def test_hostile_summaries_round_trip_through_pandas_and_csv():
    ids = [f"test_{i}" for i in range(len(HOSTILE))]
    predictions = pd.DataFrame({"fname": ids[::-1], "summary": HOSTILE[::-1]})  # order follows the sample
    content = leaderboard_csv(ids, predictions)
    assert content.startswith(b"fname,summary\n")
    content.decode("utf-8")
    frame = _read_with_pandas(content)
    assert frame.columns.tolist() == ["fname", "summary"]
    assert frame["fname"].tolist() == ids
    assert frame["summary"].tolist() == HOSTILE
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
    assert rows[0] == ["fname", "summary"] and [row[1] for row in rows[1:]] == HOSTILE
    # Re-written the way the leaderboard's own tooling would, the bytes come back unchanged.
    assert leaderboard_csv(ids, frame) == content


@pytest.mark.parametrize("fnames, summaries, message", [
    (["a", "b"], ["x", "y"], "1 missing id(s): c"),
    (["a", "b", "c", "d", "e"], ["x", "y", "z", "w", "v"], "2 id(s) not in sample_submission: d, e"),
    (["a", "b", "b", "c"], ["x", "y", "y2", "z"], "1 duplicated id(s): b"),
    (["a", "b", "c"], ["x", "  ", None], "2 empty summar(ies): b, c"),
])
def test_malformed_predictions_are_refused_naming_rows(fnames, summaries, message):
    with pytest.raises(SubmissionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        leaderboard_csv(["a", "b", "c"], pd.DataFrame({"fname": fnames, "summary": summaries}), "lead")


# -- submit, the log and its refusals on a workspace with predictions in runs/ ------------------------
TEST_SUMMARIES = HOSTILE  # the lone CR included: the runner's writer must quote it too


@pytest.fixture
def workspace(tmp_path, korean_rows):
    """12 Korean training rows in 3 folds, one test row per hostile summary; whitespace tokens keep
    ROUGE cheap."""
    from conftest import write_workspace

    test = korean_rows.tail(len(TEST_SUMMARIES)).assign(fname=lambda f: "test_" + f["fname"])
    return write_workspace(tmp_path, korean_rows, test, None, config=(
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n'
        '[candidates.lead]\nkind = "lead"\n\n[candidates.other]\nkind = "lead"\n'))


def add_source(root, name, test_summaries, oof_suffix=""):
    """runs/NAME/ as the runner writes it: every fold's OOF rows (the reference + a suffix) and the
    chosen test output."""
    from competition.data.loading import load_from_config
    from competition.data.folds import build_folds, load_folds
    from competition.data.predictions import write_fold, write_source_outputs

    config = load_config(root / "competition.toml")
    data = load_from_config(config)
    if not config.resolve(config.cv.folds_file).exists():
        build_folds(config, data.train)
    fold_of = load_folds(config).set_index("fname")["fold"]
    test = pd.DataFrame({"fname": data.test["fname"], "summary": test_summaries})
    for fold in range(config.cv.k):
        held = data.train[data.train["fname"].map(fold_of) == fold]
        oof = pd.DataFrame({"fname": held["fname"], "summary": held["summary"] + oof_suffix})
        write_fold(config, name, fold, oof, test, None, {"source": name})
    write_source_outputs(config, name, test, None, {"source": name})
    return config


def test_submit_writes_the_leaderboard_file_and_a_complete_log_row(workspace, cli):
    from competition.results.cv import leaderboard

    config = add_source(workspace, "lead", TEST_SUMMARIES, oof_suffix=" 그리고 끝")
    result = cli(["submit", "lead", "--note", "first, \"quoted\" note", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    path = workspace / "submissions" / "0001-lead.csv"
    content = path.read_bytes()
    sample_ids = pd.read_csv(workspace / "data" / "sample_submission.csv", dtype=str)["fname"].tolist()
    frame = _read_with_pandas(content)
    assert frame["fname"].tolist() == sample_ids and frame["summary"].tolist() == TEST_SUMMARIES
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
    assert rows == [["fname", "summary"], *map(list, zip(sample_ids, TEST_SUMMARIES))]
    assert row["id"] == "0001" and row["file"] == "0001-lead.csv" and row["source"] == "lead"
    assert row["sha256"] == hashlib.sha256(content).hexdigest()
    assert row["created_at"].endswith("+00:00")
    assert pd.Timestamp(row["created_at"]).tzinfo is not None
    assert row["git_commit"] == "" and row["git_dirty"] == ""  # tmp_path is no git checkout
    board = leaderboard(config, ["lead"])[0]
    assert float(row["oof_final"]) == pytest.approx(board["oof"]["final"], abs=1e-4)
    assert float(row["oof_rouge2"]) == pytest.approx(board["oof"]["rouge2"], abs=1e-4)
    assert 0 < float(row["oof_final"]) < 100
    assert row["public"] == "" and row["private"] == ""
    assert row["note"] == 'first, "quoted" note'
    log = read_log(config)
    assert log.columns.tolist() == LOG_COLUMNS and log.to_dict("records") == [row]


def test_a_real_run_logs_its_config_hash_and_dev_final(tmp_path, korean_rows, cli):
    from conftest import write_workspace
    from competition.results.cv import leaderboard

    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, dev, config=(
        '[metric]\ntokenizer = "whitespace"\n\n[cv]\nk = 3\nbootstrap = 100\n\n'
        '[candidates.lead]\nkind = "lead"\nmax_turns = 2\n'))
    for command in (["folds", "build"], ["run", "lead"], ["submit", "lead"]):
        result = cli(command, cwd=root)
        assert result.exit_code == 0, result.output
    config = load_config(root / "competition.toml")
    row = read_log(config).iloc[0]
    board = leaderboard(config, ["lead"])[0]
    assert row["config_hash"] and row["config_hash"] == board["config_hash"]
    assert row["dev_final"] and float(row["dev_final"]) == pytest.approx(board["dev_final"], abs=1e-4)
    assert 0 < float(row["dev_final"]) < 100
    matched = board["test_matched"]
    assert float(row["matched_final"]) == pytest.approx(matched["final"], abs=1e-4)
    assert [float(row["matched_ci95_low"]), float(row["matched_ci95_high"])] == pytest.approx(matched["ci95"], abs=1e-4)
    # dev_0..3 are train dialogues themselves: none is novel, so dev novel has no rows to score.
    assert board["dev_novel_rows"] == 0 and row["dev_novel_final"] == ""


def test_git_commit_and_dirty_flag_are_logged(workspace):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=workspace,
                       check=True, capture_output=True)

    config = add_source(workspace, "lead", TEST_SUMMARIES)
    git("init", "-q")
    git("add", "competition.toml")
    git("commit", "-q", "-m", "start")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    row = submit(config, "lead")
    assert row["git_commit"] == head and row["git_dirty"] == "false"
    git("add", "submissions")
    git("commit", "-q", "-m", "log")
    # The log itself changes with every submit: that is not a dirty checkout.
    assert submit(config, "lead", allow_duplicate=True)["git_dirty"] == "false"
    (workspace / "competition.toml").write_text((workspace / "competition.toml").read_text() + "\n# edited\n")
    add_source(workspace, "other", TEST_SUMMARIES[::-1])
    assert submit(config, "other")["git_dirty"] == "true"


def test_refusals_exit_2_and_name_what_is_wrong(workspace, cli):
    config = add_source(workspace, "lead", TEST_SUMMARIES)
    result = cli(["submit", "leed"], cwd=workspace)
    assert result.exit_code == 2 and "'leed'" in result.output and "did you mean 'lead'" in result.output

    assert cli(["submit", "lead"], cwd=workspace).exit_code == 0
    result = cli(["submit", "lead"], cwd=workspace)
    assert result.exit_code == 2 and "identical to submission 0001 (0001-lead.csv" in result.output
    assert "--allow-duplicate" in result.output
    result = cli(["submit", "lead", "--allow-duplicate"], cwd=workspace)
    assert result.exit_code == 0 and (workspace / "submissions" / "0002-lead.csv").exists()

    from competition.data.predictions import write_source_outputs

    ids = pd.read_csv(workspace / "data" / "test.csv", dtype=str)["fname"].tolist()
    summaries = ["a", ""] + ["c"] * (len(ids) - 3) + ["d"]
    write_source_outputs(config, "other", pd.DataFrame({"fname": ids[:-1] + ["stray"], "summary": summaries}),
                         None, {})
    result = cli(["submit", "other"], cwd=workspace)
    assert result.exit_code == 2
    assert f"1 missing id(s): {ids[-1]}" in result.output and "not in sample_submission: stray" in result.output
    assert f"1 empty summar(ies): {ids[1]}" in result.output
    assert len(read_log(config)) == 2 and not list((workspace / "submissions").glob("*other*"))


def test_an_unknown_source_is_pointed_at_a_name_and_a_configured_one_at_its_command(workspace, cli):
    """A typo gets the closest source's name, never a command for the typo; a configured source that
    never ran gets the command that makes its predictions, never a "did you mean"."""
    add_source(workspace, "lead", TEST_SUMMARIES)
    typo = cli(["submit", "leed"], cwd=workspace)
    assert typo.exit_code == 2 and "did you mean 'lead'?" in typo.output
    assert "competition run leed" not in typo.output and "no source 'leed'" in typo.output
    never_run = cli(["submit", "other"], cwd=workspace)
    assert never_run.exit_code == 2 and "did you mean" not in never_run.output
    assert "'other' is in" in never_run.output and "has no predictions under runs/ yet" in never_run.output
    assert "run `competition run other` first" in never_run.output
    nothing_close = cli(["submit", "zzz"], cwd=workspace)
    assert nothing_close.exit_code == 2 and "sources: lead, other" in nothing_close.output


def _submit_in_process(root: str, note: str, barrier) -> None:
    import os

    os.chdir(root)
    barrier.wait()
    submit(load_config("competition.toml"), "lead", note=note, allow_duplicate=True)


def test_twenty_parallel_submits_leave_twenty_intact_rows(workspace):
    config = add_source(workspace, "lead", TEST_SUMMARIES)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(20)
    processes = [context.Process(target=_submit_in_process, args=(str(workspace), f"run {i}, parallel", barrier))
                 for i in range(20)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0] * 20
    log = read_log(config)
    assert len(log) == 20
    assert sorted(log["id"]) == [f"{i:04d}" for i in range(1, 21)]
    assert sorted(log["note"]) == sorted(f"run {i}, parallel" for i in range(20))
    for row in log.to_dict("records"):
        assert hashlib.sha256((workspace / "submissions" / row["file"]).read_bytes()).hexdigest() == row["sha256"]
        assert row["oof_final"] and row["created_at"]
    assert not list((workspace / "submissions").glob(".*.tmp"))


def test_diff_counts_rows_and_scores_a_against_b(workspace, cli):
    from competition.text.metric import get_scorer

    changed = TEST_SUMMARIES[:-2] + ["#Person1#는 전혀 다른 요약입니다.", "완전히 새로운 문장"]
    add_source(workspace, "lead", TEST_SUMMARIES)
    add_source(workspace, "other", changed)
    assert cli(["submit", "lead"], cwd=workspace).exit_code == 0
    assert cli(["submit", "other"], cwd=workspace).exit_code == 0
    result = cli(["diff", "1", "0002-other.csv", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rows"] == len(TEST_SUMMARIES) and report["differing"] == 2
    # A is scored as the hypothesis against B as the reference (score, not score_pairs, as the oracle).
    expected = get_scorer("whitespace", "official", "mean").score(TEST_SUMMARIES, [[s] for s in changed])
    per_metric = expected.per_row[:, :, 2].mean(axis=0)
    assert [report["rouge1"], report["rouge2"], report["rougeL"]] == pytest.approx((per_metric * 100).tolist(),
                                                                                  abs=1e-9)
    assert report["final"] == pytest.approx(per_metric.mean() * 100, abs=1e-9)
    assert 0 < report["final"] < 100
    assert {example["b"] for example in report["examples"]} == set(changed[-2:])
    text = cli(["diff", "1", "2"], cwd=workspace).output
    assert f"2 of {len(TEST_SUMMARIES)} rows differ" in text and "완전히 새로운 문장" in text
    assert cli(["diff", "1", "9"], cwd=workspace).exit_code == 2
