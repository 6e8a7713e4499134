"""What makes a result current (provenance.py), as every command sees it: stale test outputs, folds of
two configs, changed ensemble members and changed local model folders are never used."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import write_workspace

from competition.config import load_config
from competition.provenance import candidate_hash, model_fingerprint, source_problems, workspace_inputs

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
    """Before: `submit lead --allow-duplicate` exited 0 and wrote the old test file's predictions."""
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
    that state): before, cv ranked retrieval 3/3 complete and submit and ensemble used it."""
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


def test_a_source_not_in_the_config_must_agree_with_itself(workspace, cli):
    """A candidate removed from competition.toml is still checked: one config hash across folds."""
    from competition.predictions import fold_dir

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
