"""The runner: complete fold files, resumption after a crash, staleness, --force, MBR and refit
test outputs, refusals, a seed group's members run and their MBR ranked by cv."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import LEAD_AND_RETRIEVAL as CONFIG, real_dev_workspace

from competition.data.folds import build_folds, load_folds
from competition.data.loading import load_from_config
from competition.data.predictions import load_fold_test, load_oof, load_test, read_meta, run_dir
from competition.run.runner import run_candidates
from competition.workspace.config import load_config


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture
def workspace(tmp_path, shared_data):
    return real_dev_workspace(tmp_path, shared_data)


def finished_at(config, name: str) -> dict[int, str]:
    return {fold: read_meta(run_dir(config, name) / f"fold_{fold}" / "meta.json")["finished_at"] for fold in range(3)}


def test_run_writes_complete_oof_test_and_dev_files(workspace, cli):
    result = cli(["run", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"lead", "retrieval"}
    config = load_config(workspace / "competition.toml")
    folds = load_folds(config)
    test_fnames = read(workspace / "data" / "test.csv")["fname"].tolist()
    dev_fnames = read(workspace / "data" / "dev.csv")["fname"].tolist()
    for name in ("lead", "retrieval"):
        assert report[name]["ran"] == [0, 1, 2] and report[name]["complete"] and report[name]["test_output"] == "mbr"
        oof = load_oof(config, name)
        assert sorted(oof["fname"]) == sorted(folds["fname"])  # every fold row exactly once
        assert (oof.set_index("fname")["fold"].loc[folds["fname"]].to_numpy() == folds["fold"].to_numpy()).all()
        assert (oof["summary"] != "").all()
        for fold in range(3):
            folder = run_dir(config, name) / f"fold_{fold}"
            assert read(folder / "test.csv")["fname"].tolist() == test_fnames
            assert read(folder / "dev.csv")["fname"].tolist() == dev_fnames
            meta = json.loads((folder / "meta.json").read_text())
            assert meta["fold"] == fold and meta["rows"] == {"train": 60, "oof": 30, "test": 20, "dev": 30}
            assert {"config_hash", "data_sha256", "folds_sha256", "versions", "timings"} <= set(meta)
            assert meta["versions"]["python"] and meta["timings"]["fit_s"] >= 0
        assert load_test(config, name)["fname"].tolist() == test_fnames
        assert read(run_dir(config, name) / "dev.csv")["fname"].tolist() == dev_fnames
        # The chosen test output is, row by row, one of the fold models' outputs.
        by_fold = load_fold_test(config, name)
        for row, summary in enumerate(load_test(config, name)["summary"]):
            assert summary in {by_fold[fold]["summary"].iloc[row] for fold in range(3)}
        assert not list(run_dir(config, name).rglob("*.tmp"))


def test_a_crashed_run_resumes_with_only_the_missing_folds(workspace, cli, monkeypatch):
    from competition.candidates import lead

    config = load_config(workspace / "competition.toml")
    original_fit = lead.LeadCandidate.fit

    def crash_in_fold_2(self, train_rows, fold):
        if fold == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during fold 2
        return original_fit(self, train_rows, fold)

    monkeypatch.setattr(lead.LeadCandidate, "fit", crash_in_fold_2)
    with pytest.raises(KeyboardInterrupt):
        run_candidates(config, ["lead"], progress=False)
    folder = run_dir(config, "lead")
    assert (folder / "fold_1" / "meta.json").exists() and not (folder / "fold_2" / "meta.json").exists()
    assert not (folder / "test.csv").exists()  # no test output from an incomplete run
    before = {fold: read_meta(folder / f"fold_{fold}" / "meta.json")["finished_at"] for fold in (0, 1)}

    monkeypatch.setattr(lead.LeadCandidate, "fit", original_fit)
    result = cli(["run", "lead", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["lead"]
    assert report["ran"] == [2] and report["skipped"] == [0, 1] and report["complete"]
    after = finished_at(config, "lead")
    assert {fold: after[fold] for fold in (0, 1)} == before
    assert (folder / "test.csv").exists()

    # Deleting one fold's files re-runs exactly that fold.
    (folder / "fold_1" / "meta.json").unlink()
    report = run_candidates(config, ["lead"], progress=False)["lead"]
    assert report["ran"] == [1] and report["skipped"] == [0, 2]
    assert finished_at(config, "lead")[0] == after[0]


def test_local_failure_in_a_later_candidate_leaves_the_earlier_one_finished(workspace, monkeypatch):
    """Locally each candidate is finished (test output chosen, meta written) before the next one's
    folds run, so an error in retrieval's fold 1 keeps lead's finished outputs."""
    from competition.candidates.retrieval import RetrievalCandidate

    config = load_config(workspace / "competition.toml")
    original_fit = RetrievalCandidate.fit

    def fail_in_fold_1(self, train_rows, fold):
        if fold == 1:
            raise RuntimeError("out of memory in fold 1")
        return original_fit(self, train_rows, fold)

    monkeypatch.setattr(RetrievalCandidate, "fit", fail_in_fold_1)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_candidates(config, ["lead", "retrieval"], progress=False)
    assert (run_dir(config, "lead") / "test.csv").exists() and (run_dir(config, "lead") / "meta.json").exists()
    assert read_meta(run_dir(config, "lead") / "meta.json")["finished_at"] <= \
        read_meta(run_dir(config, "retrieval") / "fold_0" / "meta.json")["started_at"]
    assert (run_dir(config, "retrieval") / "fold_0" / "meta.json").exists()
    assert not (run_dir(config, "retrieval") / "fold_1" / "meta.json").exists()
    assert not (run_dir(config, "retrieval") / "test.csv").exists()


class OutOfOrderExecutor:
    """An executor that reports jobs in the order given as (name, fold) pairs, running each one
    only when it is reported; a pair in `failing` is reported failed without running."""

    name = "fake"
    where = "the fake cluster"

    def __init__(self, events: list[str], order=(), failing=()):
        self.events, self.order, self.failing = events, list(order), set(failing)

    def cluster_has_gpus(self) -> bool:
        return False

    def plan(self, jobs) -> list[str]:
        return [f"fake plan: {len(jobs)} jobs"]

    def run(self, context, jobs):
        by_key = {(job.name, job.fold): job for job in jobs}
        order = self.order or list(by_key)
        assert sorted(order) == sorted(by_key)
        self.events.append(f"submit {len(jobs)}")
        return self._report(context, [by_key[key] for key in order])

    def _report(self, context, jobs):
        from competition.run.executors import JobResult
        from competition.run.fold_run import run_fold

        for job in jobs:
            if (job.name, job.fold) in self.failing:
                yield JobResult(job, error="RuntimeError: node lost")
                continue
            self.events.append(f"run {job.name}/{job.fold}")
            yield JobResult(job, meta=run_fold(context, job.name, job.fold, job.wanted, job.settings))

    def close(self) -> None:
        self.events.append("close")


def test_each_candidate_is_finished_when_its_last_fold_reports_in_any_order(workspace, monkeypatch):
    """One run path for every executor: plan all, submit all, finish a candidate as soon as its
    last fold reports (a failed fold included); one with nothing pending is finished at once."""
    from competition.run import runner

    config = load_config(workspace / "competition.toml")
    events: list[str] = []
    original_finish = runner.finish_candidate

    def recorded_finish(context, name, *args):
        report = original_finish(context, name, *args)
        events.append(f"finish {name}")
        return report

    monkeypatch.setattr(runner, "finish_candidate", recorded_finish)
    order = [("retrieval", 2), ("lead", 0), ("retrieval", 0), ("retrieval", 1), ("lead", 2), ("lead", 1)]
    executor = OutOfOrderExecutor(events, order, failing=[("lead", 2)])
    monkeypatch.setattr(runner, "make_executor", lambda name, address: executor)
    lines: list[str] = []
    report = run_candidates(config, ["lead", "retrieval"], progress=False, echo=lines.append, executor="fake")
    assert events == ["submit 6", "run retrieval/2", "run lead/0", "run retrieval/0", "run retrieval/1",
                      "finish retrieval", "run lead/1", "finish lead", "close"]
    assert list(report) == ["lead", "retrieval"]
    assert report["retrieval"]["ran"] == [0, 1, 2] and report["retrieval"]["test_output"] == "mbr"
    assert report["lead"]["ran"] == [0, 1] and not report["lead"]["complete"]
    assert report["lead"]["failed"] == {"2": "RuntimeError: node lost"}
    assert "fake plan: 6 jobs" in lines and "lead: fold 2 failed: RuntimeError: node lost" in lines
    assert not (run_dir(config, "lead") / "test.csv").exists()

    events.clear()
    executor.order, executor.failing = [], set()
    again = run_candidates(config, ["lead", "retrieval"], progress=False, echo=lines.append, executor="fake")
    assert events == ["submit 1", "finish retrieval", "run lead/2", "finish lead", "close"]
    assert again["retrieval"]["ran"] == [] and again["retrieval"]["test_output"] == "unchanged"
    assert again["lead"]["ran"] == [2] and again["lead"]["skipped"] == [0, 1] and again["lead"]["complete"]


def test_changed_params_make_folds_stale_and_force_reruns(workspace, cli):
    config = load_config(workspace / "competition.toml")
    run_candidates(config, ["lead"], progress=False)
    first = finished_at(config, "lead")
    cached = run_candidates(config, ["lead"], progress=False)["lead"]
    assert cached["ran"] == [] and cached["test_output"] == "unchanged"

    (workspace / "competition.toml").write_text(CONFIG.replace("max_turns = 4", "max_turns = 3"), encoding="utf-8")
    changed = load_config(workspace / "competition.toml")
    result = cli(["run", "lead", "--folds", "0"], cwd=workspace)
    assert result.exit_code == 0, result.output
    assert "fold 0 is stale" in result.stderr and "1/3 folds done" in result.stderr
    assert finished_at(changed, "lead")[1] == first[1]
    report = run_candidates(changed, ["lead"], progress=False)["lead"]
    assert report["ran"] == [1, 2] and report["complete"]
    forced = run_candidates(changed, ["lead"], force=True, progress=False)["lead"]
    assert forced["ran"] == [0, 1, 2]


def test_refit_fits_once_on_every_row(workspace):
    from competition.text.turns import lead_text

    (workspace / "competition.toml").write_text(
        CONFIG.replace("bootstrap = 100", 'bootstrap = 100\ntest_strategy = "refit"').replace("max_turns = 4", "turns = 2"),
        encoding="utf-8")
    config = load_config(workspace / "competition.toml")
    report = run_candidates(config, ["lead"], progress=False)["lead"]
    assert report["test_output"] == "refit"
    assert (run_dir(config, "lead") / "refit" / "work" / "lead.json").exists()
    test = read(workspace / "data" / "test.csv")
    assert load_test(config, "lead")["summary"].tolist() == [lead_text(d, 2) for d in test["dialogue"]]
    assert json.loads((run_dir(config, "lead") / "meta.json").read_text())["test_strategy"] == "refit"


def test_refusals_name_the_fix(workspace, cli):
    typo = cli(["run", "leed"], cwd=workspace)
    assert typo.exit_code == 2 and "did you mean 'lead'" in typo.output
    bad_fold = cli(["run", "lead", "--folds", "0,5"], cwd=workspace)
    assert bad_fold.exit_code == 2 and "the folds are 0..2" in bad_fold.output
    not_a_number = cli(["run", "lead", "--folds", "first"], cwd=workspace)
    assert not_a_number.exit_code == 2 and "separated by commas" in not_a_number.output
    assert not (workspace / "runs").exists()


def test_cuda_only_candidates_are_skipped_on_cpu_or_refused(workspace, cli, monkeypatch):
    import torch

    from competition.candidates import lead

    monkeypatch.setattr(lead.LeadCandidate, "needs_cuda", lambda self: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli(["run", "lead", "--json"], cwd=workspace)
    assert result.exit_code == 0, result.output
    # "ran" and "skipped" are lists of folds for every candidate; why nothing ran is "not_run"
    assert json.loads(result.stdout)["lead"] == {"kind": "lead", "ran": [], "skipped": [], "complete": False,
                                                 "not_run": "needs CUDA"}
    assert "lead: skipped (candidate 'lead' needs CUDA" in result.stderr
    table = cli(["run", "lead"], cwd=workspace)
    assert table.exit_code == 0 and "skipped: needs CUDA" in table.stdout
    refused = cli(["run", "lead", "--require-all"], cwd=workspace)
    assert refused.exit_code == 2 and "drop --require-all" in refused.output
    assert not (workspace / "runs" / "lead" / "fold_0" / "oof.csv").exists()


def test_extra_folds_from_a_larger_k_are_removed(workspace):
    config = load_config(workspace / "competition.toml")
    run_candidates(config, ["lead"], progress=False)
    config.cv.k = 2
    build_folds(config, load_from_config(config).train, force=True)
    report = run_candidates(config, ["lead"], progress=False)["lead"]
    assert report["k"] == 2 and report["ran"] == [0, 1]
    assert not (run_dir(config, "lead") / "fold_2").exists()
    assert len(load_oof(config, "lead")) == 90 and np.isin(load_oof(config, "lead")["fold"], [0, 1]).all()


def test_three_seeds_give_three_sources_and_their_mbr_ranked_by_cv(cli, korean_workspace):
    config = korean_workspace / "competition.toml"
    config.write_text(config.read_text() + '[cv]\nk = 2\n\n[candidates.lead]\nkind = "lead"\nseeds = [13, 42, 77]\n',
                      encoding="utf-8")
    assert cli(["folds", "build"], cwd=korean_workspace).exit_code == 0
    result = cli(["run", "lead", "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    members = ["lead#s13", "lead#s42", "lead#s77"]
    assert list(report) == [*members, "lead"]
    assert report["lead"]["members"] == members and report["lead"]["complete"]
    hashes = set()
    for member, seed in zip(members, (13, 42, 77)):
        meta = json.loads((korean_workspace / "runs" / member / "fold_0" / "meta.json").read_text())
        assert meta["config"]["seed"] == seed and meta["name"] == member
        hashes.add(meta["config_hash"])
    assert len(hashes) == 3  # own config hash, own cache
    source = json.loads((korean_workspace / "runs" / "lead" / "meta.json").read_text())
    assert source["kind"] == "ensemble" and source["members"] == members

    board = {entry["name"]: entry for entry in json.loads(cli(["cv", "--json"], cwd=korean_workspace).stdout)}
    assert set(members) | {"lead"} <= set(board)
    assert all(board[name]["complete"] for name in [*members, "lead"])

    again = json.loads(cli(["run", "--json"], cwd=korean_workspace).stdout)  # every enabled seed, all cached
    assert all(again[member]["ran"] == [] for member in members) and again["lead"]["complete"]


def test_two_seeds_say_their_mbr_is_the_first_seeds_outputs(cli, korean_workspace):
    """MBR over two outputs is a tie on every row (each agrees with the other equally), so NAME of
    seeds = [a, b] is seed a's outputs: run says so instead of presenting it as their ensemble."""
    config = korean_workspace / "competition.toml"
    config.write_text(config.read_text() + '[cv]\nk = 2\n\n[candidates.lead]\nkind = "lead"\nseeds = [1, 2]\n',
                      encoding="utf-8")
    assert cli(["folds", "build"], cwd=korean_workspace).exit_code == 0
    result = cli(["run", "lead"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert ("lead: the MBR of two seeds cannot choose by agreement (each output agrees with the other equally), "
            "so lead's outputs are lead#s1's: use three or more seeds") in result.output
    three = config.read_text().replace("seeds = [1, 2]", "seeds = [1, 2, 3]")
    config.write_text(three, encoding="utf-8")
    result = cli(["run", "lead"], cwd=korean_workspace)
    assert result.exit_code == 0 and "the MBR of two seeds" not in result.output


def test_run_prints_a_short_readable_line_per_candidate(workspace):
    """run prints one short line per candidate: its kind and the params set away from their
    defaults, no JSON; the full settings are in meta.json."""
    config = load_config(workspace / "competition.toml")
    lines: list[str] = []
    run_candidates(config, progress=False, echo=lines.append)
    assert "lead: lead, max_turns 4" in lines and "retrieval: retrieval, default settings" in lines
    config_line = next(line for line in lines if line.startswith("config: "))
    assert config_line.startswith("config: metric kiwi tokens, official convention, mean over references; cv k=3")
    assert not any("{" in line for line in lines) and max(len(line) for line in lines) < 220
    meta = json.loads((run_dir(config, "lead") / "fold_0" / "meta.json").read_text())
    assert meta["config"]["params"]["max_turns"] == 4 and meta["config"]["params"]["min_turns"] == 1


def test_settings_line_puts_the_model_first_and_stays_short(tmp_path):
    """A model candidate's JSON line ran past 1,000 characters; its summary names the model first
    and counts what it leaves out."""
    from competition.run.runner import settings_line

    (tmp_path / "competition.toml").write_text("""
[candidates.solar_qlora]
kind = "qlora"
model = "upstage/SOLAR-10.7B-Instruct-v1.0"
require_cuda = true
lora_r = 64
lora_alpha = 128
max_length = 2048
batch_size = 1
grad_accumulation = 16
learning_rate = 1e-4
epochs = 1.0
gradient_checkpointing = true
""", encoding="utf-8")
    line = settings_line(load_config(tmp_path / "competition.toml"), "solar_qlora")
    assert line.startswith("qlora, model upstage/SOLAR-10.7B-Instruct-v1.0, ")
    assert "lora_r 64" in line and "learning_rate 0.0001" in line and line.endswith(", +1 more") and len(line) < 200
