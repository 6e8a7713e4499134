"""What makes a result current (provenance.py), as every command sees it: stale test outputs, folds of
two configs, changed ensemble members and changed local model folders are never used."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import write_workspace

from competition.models.fingerprint import model_fingerprint
from competition.results.provenance import candidate_hash, source_problems, workspace_inputs
from competition.workspace.config import load_config

CONFIG = """
[metric]
tokenizer = "whitespace"

[cv]
k = 3
bootstrap = 100

[candidates.lead]
kind = "lead"
max_turns = 2

[candidates.retrieval]
kind = "retrieval"

[ensembles.mix]
members = ["lead", "retrieval"]
"""


@pytest.fixture
def workspace(tmp_path, korean_rows, cli):
    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, dev, CONFIG)
    for command in (["folds", "build"], ["run"], ["ensemble", "mix"]):
        result = cli(command, cwd=root)
        assert result.exit_code == 0, result.output
    return root


def _board(cli, root) -> dict:
    result = cli(["cv", "--json"], cwd=root)
    assert result.exit_code == 0, result.output
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def test_everything_current_after_a_run(workspace, cli):
    config = load_config(workspace / "competition.toml")
    hashes, k = workspace_inputs(config)
    assert k == 3 and all(source_problems(config, name, hashes, k) == [] for name in ("lead", "retrieval", "mix"))
    assert all(entry["complete"] for entry in _board(cli, workspace).values())


def test_submit_refuses_test_predictions_of_an_older_test_file(workspace, cli):
    """Once data/test.csv changes, submit refuses (exit 2) predictions made on the old test file, a
    candidate's or an ensemble's, even with --allow-duplicate, and says what to rerun."""
    assert cli(["submit", "lead"], cwd=workspace).exit_code == 0
    test = pd.read_csv(workspace / "data" / "test.csv", dtype=str, keep_default_na=False)
    test.loc[0, "dialogue"] = "#Person1#: 새로 바뀐 시험 대화입니다.\n#Person2#: 네, 그렇군요."
    test.to_csv(workspace / "data" / "test.csv", index=False)
    for source in ("lead", "mix"):
        refused = cli(["submit", source, "--allow-duplicate"], cwd=workspace)
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert "predicted on another test file than the current data/test.csv" in refused.output
    assert "rerun it with `competition run lead`" in cli(["submit", "lead", "--allow-duplicate"], cwd=workspace).output
    log = pd.read_csv(workspace / "submissions" / "log.csv", dtype=str)
    assert len(log) == 1 and sorted(p.name for p in (workspace / "submissions").glob("*.csv")) == \
        ["0001-lead.csv", "log.csv"]
    board = _board(cli, workspace)
    assert not board["lead"]["complete"] and not board["mix"]["complete"]
    assert cli(["run", "lead"], cwd=workspace).exit_code == 0  # stale folds re-run without --force
    assert cli(["submit", "lead"], cwd=workspace).exit_code == 0


def test_folds_of_two_configs_are_incomplete_everywhere(workspace, cli):
    """top_k changed, then `run` killed after fold 0 was rewritten (fold 0 alone re-run stands for
    that state): cv shows retrieval incomplete with each reason, and submit and ensemble refuse it."""
    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('kind = "retrieval"', 'kind = "retrieval"\ntop_k = 2'),
                    encoding="utf-8")
    assert cli(["run", "retrieval", "--folds", "0"], cwd=workspace).exit_code == 0
    entry = _board(cli, workspace)["retrieval"]
    assert not entry["complete"] and entry["folds_done"] == 3
    assert "folds 1, 2 were made with another config of retrieval than competition.toml's now" in entry["problems"]
    assert "the test output was made with another config than its folds" in entry["problems"]
    for command in (["submit", "retrieval"], ["ensemble", "mix"]):
        refused = cli(command, cwd=workspace)
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert "folds 1, 2 were made with another config of retrieval" in refused.output
        assert "`competition run retrieval`" in refused.output
    assert "member 'retrieval' is not current" in _board(cli, workspace)["mix"]["problems"][0]
    assert cli(["run", "retrieval"], cwd=workspace).exit_code == 0
    assert _board(cli, workspace)["retrieval"]["complete"]


def test_an_ensemble_whose_member_changed_is_not_current(workspace, cli):
    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("max_turns = 2", "max_turns = 3"), encoding="utf-8")
    assert cli(["run", "lead"], cwd=workspace).exit_code == 0
    entry = _board(cli, workspace)["mix"]
    assert not entry["complete"] and "member 'lead' changed since mix was built" in entry["problems"]
    refused = cli(["submit", "mix"], cwd=workspace)
    assert refused.exit_code == 2 and "rerun it with `competition ensemble mix`" in refused.output
    assert cli(["ensemble", "mix"], cwd=workspace).exit_code == 0
    assert _board(cli, workspace)["mix"]["complete"]


def test_a_star_ensemble_is_stale_once_another_candidate_ran(workspace, cli):
    """A members = ["*"] ensemble is stale once another candidate has run (cv says which members it
    now stands for), and submit refuses it until it is rebuilt."""
    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + '\n[ensembles.every]\nmembers = ["*"]\n', encoding="utf-8")
    assert cli(["ensemble", "every"], cwd=workspace).exit_code == 0
    assert cli(["submit", "every"], cwd=workspace).exit_code == 0
    toml.write_text(toml.read_text(encoding="utf-8") + '\n[candidates.retrieval_k2]\nkind = "retrieval"\ntop_k = 2\n',
                    encoding="utf-8")
    assert _board(cli, workspace)["every"]["complete"]  # not run yet: "*" does not take it
    assert cli(["run", "retrieval_k2"], cwd=workspace).exit_code == 0
    reason = 'members = ["*"] now stands for lead, retrieval, retrieval_k2, but it was built from lead, retrieval'
    entry = _board(cli, workspace)["every"]
    assert not entry["complete"] and reason in entry["problems"]
    refused = cli(["submit", "every", "--allow-duplicate"], cwd=workspace)
    assert refused.exit_code == 2 and reason in refused.output
    assert "rerun it with `competition ensemble every`" in refused.output
    listing = json.loads(cli(["ensemble", "--json"], cwd=workspace).stdout)
    assert {entry["name"]: entry["current"] for entry in listing} == {"mix": True, "every": False}
    assert cli(["ensemble", "every"], cwd=workspace).exit_code == 0
    assert _board(cli, workspace)["every"]["complete"]
    meta = json.loads((workspace / "runs" / "every" / "meta.json").read_text(encoding="utf-8"))
    assert meta["members"] == ["lead", "retrieval", "retrieval_k2"]
    assert cli(["submit", "every"], cwd=workspace).exit_code == 0


def test_a_changed_config_blames_the_folds_not_the_test_output(workspace, cli):
    """A changed config makes the folds stale, named; the test output, made with the same config
    as its folds, is not blamed too."""
    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("max_turns = 2", "max_turns = 3"), encoding="utf-8")
    problems = _board(cli, workspace)["lead"]["problems"]
    assert "folds 0, 1, 2 were made with another config of lead than competition.toml's now" in problems
    assert not any("test output" in problem for problem in problems), problems


def test_a_source_not_in_the_config_must_agree_with_itself(workspace, cli):
    """A candidate removed from competition.toml is still checked: one config hash across folds."""
    from competition.data.predictions import fold_dir

    meta_path = fold_dir(load_config(workspace / "competition.toml"), "lead", 1) / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta_path.write_text(json.dumps({**meta, "config_hash": "another"}), encoding="utf-8")
    toml = workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("[candidates.lead]", "[candidates.lead_gone]"),
                    encoding="utf-8")
    assert "its folds were made with 2 different configs" in _board(cli, workspace)["lead"]["problems"]


def test_local_model_folders_are_fingerprinted(tmp_path):
    """A prompt model in a local folder: other weights of the same size give another config hash."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3"}', encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"0123456789")
    (tmp_path / "competition.toml").write_text(f'[candidates.p]\nkind = "prompt"\nmodel = "{model}"\n',
                                               encoding="utf-8")
    config = load_config(tmp_path / "competition.toml")
    before, settings = candidate_hash(config, "p")
    assert settings["models"]["model"]["files"] == {"config.json": 23, "model.safetensors": 10}
    (model / "model.safetensors").write_bytes(b"9876543210")
    assert candidate_hash(config, "p")[0] != before
    assert model_fingerprint("Qwen/Qwen3-0.6B") is None  # a hub id: its name is the identity


def test_written_files_follow_the_umask(tmp_path, workspace, cli):
    """Files the tool writes get the mode the umask allows: 0664 under umask 002, and under 022 the
    folds, metas, log and submission of every command are 0644."""
    import os
    import stat

    from competition.files import atomic_write_text

    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
        assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o664
        os.umask(0o022)
        assert cli(["folds", "build", "--force"], cwd=workspace).exit_code == 0
        assert cli(["run", "lead", "--force"], cwd=workspace).exit_code == 0
        assert cli(["submit", "lead"], cwd=workspace).exit_code == 0
    finally:
        os.umask(old)
    for path in (workspace / "folds" / "folds.csv", workspace / "runs" / "lead" / "fold_0" / "meta.json",
                 workspace / "submissions" / "log.csv", workspace / "submissions" / "0001-lead.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_leftovers_of_a_kill_are_removed_by_the_next_command_that_writes(workspace, cli):
    """Temp files of interrupted writes go (once old enough that no writer can still be renaming
    them) and git ignores them; a submission whose log row was written is finished, one whose row
    never was is dropped. A command that only reads and scores (score, cv) leaves them alone."""
    import os
    import shutil
    import subprocess
    import time
    from pathlib import Path

    runs, submissions = workspace / "runs", workspace / "submissions"
    submissions.mkdir(exist_ok=True)
    old = [runs / "lead" / "fold_0" / ".meta.json.k1ll3d.tmp", submissions / ".log.csv.k1ll3d.tmp",
           runs / "lead" / ".test.csv.k1ll3d.tmp"]
    recent = runs / "lead" / "fold_1" / ".oof.csv.wr1t1ng.tmp"
    for path in [*old, recent]:
        path.write_text("half", encoding="utf-8")
    for path in old:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert cli(["submit", "lead"], cwd=workspace).exit_code == 0  # log row 0001
    # Killed after the log row of 0002 was written, before the rename; and a 0003 never logged.
    log = pd.read_csv(submissions / "log.csv", dtype=str, keep_default_na=False)
    log = pd.concat([log, log.assign(id="0002", file="0002-lead.csv", sha256="x")], ignore_index=True)
    log.to_csv(submissions / "log.csv", index=False)
    (submissions / ".0002-lead.csv.pending").write_text("fname,summary\n", encoding="utf-8")
    (submissions / ".0003-mix.csv.pending").write_text("fname,summary\n", encoding="utf-8")

    leftovers = sorted(path for folder in (runs, submissions) for path in folder.rglob(".*") if path.is_file())
    for read_only in (["score", "lead"], ["cv"]):
        assert cli(read_only, cwd=workspace).exit_code == 0
        assert sorted(path for folder in (runs, submissions) for path in folder.rglob(".*") if path.is_file()) == \
            leftovers, read_only
    assert cli(["history"], cwd=workspace).exit_code == 0
    assert not any(path.exists() for path in old) and recent.exists()
    assert (submissions / "0002-lead.csv").read_text(encoding="utf-8") == "fname,summary\n"
    assert sorted(p.name for p in submissions.iterdir() if p.name.startswith(".") and p.name != ".log.lock") == []
    # The project's .gitignore hides such leftovers from `git status` in a workspace.
    shutil.copy(Path(__file__).resolve().parents[2] / ".gitignore", workspace / ".gitignore")
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    paths = [str(recent.relative_to(workspace)), "submissions/.log.csv.x1.tmp", "submissions/.0004-a.csv.pending",
             "folds/.folds.csv.x1.tmp"]
    ignored = subprocess.run(["git", "-C", str(workspace), "check-ignore", *paths], capture_output=True, text=True)
    assert ignored.stdout.split() == paths


def test_config_hashes_survive_new_keys():
    """Model candidates hash to pinned values whatever keys Params has gained (a key at its
    default leaves the hash alone): an unchanged competition.toml keeps its results current."""
    from competition.workspace.config import parse_config

    config = parse_config({"candidates": {
        "q": {"kind": "qlora", "model": "Qwen/Qwen3-0.6B", "lora_r": 32},
        "t5": {"kind": "seq2seq", "model": "paust/pko-t5-large", "epochs": 3.0},
        "p": {"kind": "prompt", "model": "Qwen/Qwen3-0.6B", "few_shot": 2}}})
    assert {name: candidate_hash(config, name)[0] for name in config.candidates} == {
        "q": "ae6afe12fee4a627", "t5": "f26ef3345207c6c1", "p": "4809b5c3e9902e68"}
    changed = parse_config({"candidates": {"q": {"kind": "qlora", "model": "Qwen/Qwen3-0.6B", "lora_r": 32,
                                                 "optim": "adafactor"}}})
    assert candidate_hash(changed, "q")[0] != "ae6afe12fee4a627"  # a new key, once set, counts

    # Keeping the checkpoint with the best validation ROUGE ties the result to [metric].
    rouge = parse_config({"candidates": {"q": {"kind": "qlora", "model": "m", "eval_rows": 0.1}},
                          "metric": {"convention": "rouge-score"}})
    loss = parse_config({"candidates": {"q": {"kind": "qlora", "model": "m", "eval_rows": 0.1,
                                              "eval_metric": "loss"}}})
    assert "metric" in candidate_hash(rouge, "q")[1] and "metric" not in candidate_hash(loss, "q")[1]


def test_a_tuned_member_is_rebuilt_by_tune():
    from competition.workspace.config import Config
    from competition.run.ensemble import rerun_command

    assert rerun_command(Config(), "t5@tuned") == "competition tune t5"
    assert rerun_command(Config(), "t5") == "competition run t5"

