"""A new candidate kind is one module: this file is the whole toy kind (its Params from the shared
parts, its Candidate with the declared interface), registered by name from outside the package. It
trains (fit saves weights), and config, run, cv, tune, export, submit, `competition pipeline` (what
`make submit` runs) and the Ray resources take it without an entry anywhere else in the package."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from conftest import write_workspace

from competition import candidates
from competition.candidates import register_kind
from competition.candidates.base import Candidate, ExportedModel
from competition.files import atomic_write_json
from competition.models.params import Generation, Model, Placement
from competition.models.training import REPORT_FILE, finished_fit

WEIGHTS = "words.json"


@dataclass
class Params(Model, Placement, Generation):
    """A toy 'model' that answers with the words of the last `turns` turns: as many as the training
    summaries had (what it learns), at most max_new_tokens (a decoding setting tune may search)."""

    turns: int = 1  # how many last turns the summary is taken from


class LastTurns(Candidate):
    kind = "toy"
    exports = True  # its learnt length, as a JSON file

    def trained_weights(self) -> Path:
        return self.workdir / WEIGHTS

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        fingerprint, done = finished_fit(self, train_rows)
        if done is None:  # train.json, written last, marks a finished training (as the shipped kinds do)
            self.workdir.mkdir(parents=True, exist_ok=True)
            words = int(train_rows["summary"].str.split().str.len().median())
            atomic_write_json(self.trained_weights(), {"words": words})
            atomic_write_json(self.workdir / REPORT_FILE, {"fingerprint": fingerprint, "train_rows": len(train_rows)})
        self.report = {"trained_on": len(train_rows), "tokenizer": self.inputs.metric.tokenizer,
                       "vocabulary_texts": len(self.inputs.vocabulary_texts)}

    def predict(self, rows: pd.DataFrame) -> list[str]:
        words = json.loads(self.trained_weights().read_text(encoding="utf-8"))["words"]  # tune never fits
        cap = min(words, self.params.max_new_tokens)
        return [" ".join(" ".join(dialogue.split("\n")[-self.params.turns:]).split()[:cap])
                for dialogue in rows["dialogue"]]

    def export(self, folder: Path, decoding, merge: bool = False, dtype: str = "bfloat16") -> ExportedModel:
        shutil.copy2(self.trained_weights(), folder / WEIGHTS)
        generation = {"max_new_tokens": decoding.max_new_tokens}
        (folder / "generation.json").write_text(json.dumps(generation), encoding="utf-8")
        return ExportedModel(what="learnt length", description="the summary length it learnt", generation=generation,
                             library="json", card=("## Load", "", f"`json.load(open('{WEIGHTS}'))['words']`", ""))


CANDIDATE = LastTurns


def test_a_toy_kind_trains_tunes_exports_and_submits_through_the_pipeline(tmp_path, cli, korean_rows, monkeypatch):
    import torch

    monkeypatch.setattr(candidates, "KINDS", dict(candidates.KINDS))  # the toy kind leaves with this test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    register_kind("toy", __name__)
    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, korean_rows, test, dev, (
        '[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\n'
        '[candidates.last2]\nkind = "toy"\nmodel = "none"\nturns = 2\ndevice = "cuda"\nnum_cpus = 2\n'
        '[candidates.gpu_only]\nkind = "toy"\nmodel = "none"\nrequire_cuda = true\n'
        '[candidates.lead]\nkind = "lead"\nenabled = false\n'))
    result = cli(["pipeline"], cwd=root)  # folds, run, cv, submit: `make submit`
    assert result.exit_code == 0, result.output
    assert "gpu_only: skipped (candidate 'gpu_only' needs CUDA" in result.output  # its Placement says so
    assert (root / "submissions" / "0001-last2.csv").exists()
    (entry,) = json.loads(cli(["cv", "--json"], cwd=root).stdout)
    assert entry["name"] == "last2" and entry["kind"] == "toy" and entry["complete"] and entry["oof"]["final"] > 0
    work = root / "runs" / "last2" / "fold_0" / "work"
    assert json.loads((work / WEIGHTS).read_text())["words"] > 0 and (work / REPORT_FILE).exists()
    meta = json.loads((root / "runs" / "last2" / "fold_0" / "meta.json").read_text(encoding="utf-8"))
    # what the run gave the candidate in its constructor: [metric], the texts of every split (train, test, dev)
    assert meta["reports"]["oof"] == {"trained_on": 8, "tokenizer": "whitespace",
                                      "vocabulary_texts": 2 * len(korean_rows) + len(test) + 2 * len(dev)}

    (root / "space.toml").write_text("max_new_tokens = [1, 3]\n", encoding="utf-8")
    result = cli(["tune", "last2", "--space", "space.toml", "--trials", "3", "--confirm", "2"], cwd=root)
    assert result.exit_code == 0, result.output
    tuned = json.loads((root / "runs" / "last2@tuned" / "meta.json").read_text(encoding="utf-8"))["setting"]

    result = cli(["export", "last2", "--json"], cwd=root)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "toy" and report["model"] == "fold 0" and report["tuned"]
    assert report["generation"] == {"max_new_tokens": tuned["max_new_tokens"]}
    assert report["files"] == ["README.md", "generation.json", WEIGHTS]
    card = (root / "exports" / "last2" / "fold_0" / "README.md").read_text(encoding="utf-8")
    assert "library_name: json" in card and "`competition export last2`: the summary length it learnt" in card
    assert "learnt length written to" in cli(["export", "last2", "--fold", "1"], cwd=root).output
    refused = cli(["export", "lead"], cwd=root)
    assert refused.exit_code == 2 and "export works for qlora, seq2seq and toy candidates" in refused.output
    refused = cli(["tune", "lead"], cwd=root)
    assert refused.exit_code == 2 and "tune a prompt, qlora, seq2seq or toy candidate" in refused.output

    typo = cli(["run"], cwd=write_workspace(tmp_path / "typo", korean_rows, test, dev,
                                            '[candidates.x]\nkind = "toy"\nmodel = "m"\nturns = 2\ntursn = 3\n'))
    assert typo.exit_code == 2 and "did you mean 'turns'" in typo.output
    kindless = cli(["run"], cwd=write_workspace(tmp_path / "kindless", korean_rows, test, dev,
                                                '[candidates.x]\nturns = 2\n'))
    assert kindless.exit_code == 2 and "needs kind = \"lead\" (or " in kindless.output and "toy" in kindless.output

    from competition.workspace.config import load_config
    from competition.run.executors import task_resources

    params = load_config(root / "competition.toml").candidate("last2").params
    assert task_resources(params, cluster_has_gpus=False) == {"num_cpus": 2.0, "num_gpus": 1}  # device = "cuda"
