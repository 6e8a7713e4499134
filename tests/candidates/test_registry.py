"""A new candidate kind is one module: this file is the whole toy kind (its Params from the shared
parts, its Candidate with the declared interface), registered by name; config, run, cv and the Ray
resources take it without an entry anywhere else in the package."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from conftest import write_workspace

from competition import candidates
from competition.candidates import register_kind
from competition.candidates.base import Candidate
from competition.models.params import Model, Placement


@dataclass
class Params(Model, Placement):
    """A toy 'model' that answers with the last `turns` turns (it places a model: Placement)."""

    turns: int = 1  # how many last turns make the summary


class LastTurns(Candidate):
    kind = "toy"

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        self.report = {"trained_on": len(train_rows)}

    def predict(self, rows: pd.DataFrame) -> list[str]:
        return [" ".join(dialogue.split("\n")[-self.params.turns:]) for dialogue in rows["dialogue"]]


CANDIDATE = LastTurns


def test_a_toy_kind_runs_through_the_whole_flow(tmp_path, cli, korean_rows, monkeypatch):
    monkeypatch.setattr(candidates, "KINDS", dict(candidates.KINDS))  # the toy kind leaves with this test
    register_kind("toy", __name__)
    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, dev, (
        '[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\n'
        '[candidates.last2]\nkind = "toy"\nmodel = "none"\nturns = 2\ndevice = "cuda"\nnum_cpus = 2\n'))
    for command in (["folds", "build"], ["run"], ["submit", "last2"]):
        result = cli(command, cwd=root)
        assert result.exit_code == 0, result.output
    (entry,) = json.loads(cli(["cv", "--json"], cwd=root).stdout)
    assert entry["name"] == "last2" and entry["kind"] == "toy" and entry["complete"] and entry["oof"]["final"] > 0
    meta = json.loads((root / "runs" / "last2" / "fold_0" / "meta.json").read_text(encoding="utf-8"))
    assert meta["reports"]["oof"] == {"trained_on": 8}  # its declared report reached meta.json
    refused = cli(["run"], cwd=write_workspace(tmp_path / "typo", korean_rows, test, dev,
                                               '[candidates.x]\nkind = "toy"\nmodel = "m"\nturns = 2\ntursn = 3\n'))
    assert refused.exit_code == 2 and "did you mean 'turns'" in refused.output

    from competition.workspace.config import load_config
    from competition.run.executors import task_resources

    params = load_config(root / "competition.toml").candidate("last2").params
    assert task_resources(params, cluster_has_gpus=False) == {"num_cpus": 2.0, "num_gpus": 1}  # device = "cuda"
