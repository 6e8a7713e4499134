"""`competition run --executor ray`: every (candidate, fold) as a Ray task on a local CPU cluster
writes the same files as the local executor; a failed task is reported, a rerun resumes; a task
reserves what its fold uses (num_processes x num_cpus CPUs for a launched fold), and the plan is
printed before submitting. Joining clusters: test_ray_cluster.py."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import write_workspace

from competition.candidates.lead import Params as LeadParams
from competition.candidates.prompt import Params as PromptParams
from competition.candidates.qlora import Params as QLoRAParams
from competition.candidates.seq2seq import Params as Seq2SeqParams
from competition.run.executors import ExecutorError, FoldJob, make_executor, task_resources
from competition.run.ray_cluster import RayUnavailable


FOLDS = 3
NAMES = ("lead", "retrieval", "tiny")


def config_text(model_dir) -> str:
    return (f"[cv]\nk = {FOLDS}\nbootstrap = 100\n\n"
            "[candidates.lead]\nkind = \"lead\"\nmax_turns = 4\n\n"
            "[candidates.retrieval]\nkind = \"retrieval\"\n\n"
            f"[candidates.tiny]\nkind = \"qlora\"\nmodel = \"{model_dir}\"\nmax_steps = 2\nbatch_size = 4\n"
            "grad_accumulation = 1\ngradient_checkpointing = false\nmax_length = 512\nmax_new_tokens = 8\n"
            "save_steps = 100\n")


@pytest.fixture(scope="module")
def ray_cluster():
    """One private local 2-CPU Ray cluster in this process for the whole module ("local": never a
    cluster someone else started on the machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def workspace(root, korean_rows, model_dir, cli):
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    dev = korean_rows.head(3).assign(fname=lambda f: "dev_" + f["fname"])
    write_workspace(root, korean_rows, test, dev, config_text(model_dir))
    assert cli(["folds", "build"], cwd=root).exit_code == 0
    return root


def prediction_files(root) -> dict[str, bytes]:
    runs = root / "runs"
    return {str(path.relative_to(runs)): path.read_bytes() for path in sorted(runs.rglob("*.csv"))
            if "work" not in path.parts}


def test_resources_follow_kind_device_and_launcher():
    assert task_resources(LeadParams(), cluster_has_gpus=lambda: True) == {"num_cpus": 1.0, "num_gpus": 0}
    assert task_resources(QLoRAParams(), cluster_has_gpus=lambda: True)["num_gpus"] == 1
    assert task_resources(QLoRAParams(), cluster_has_gpus=lambda: False)["num_gpus"] == 0
    assert task_resources(QLoRAParams(require_cuda=True), cluster_has_gpus=lambda: False)["num_gpus"] == 1
    assert task_resources(QLoRAParams(device="cpu"), cluster_has_gpus=lambda: True)["num_gpus"] == 0
    four = QLoRAParams(launcher="accelerate", num_processes=4)
    assert task_resources(four, cluster_has_gpus=lambda: True)["num_gpus"] == 4
    assert task_resources(QLoRAParams(num_cpus=4), cluster_has_gpus=lambda: False) == {"num_cpus": 4.0,
                                                                                        "num_gpus": 0}
    assert task_resources(PromptParams(), cluster_has_gpus=lambda: True) == {"num_cpus": 1.0, "num_gpus": 1}


def test_the_gpu_question_is_asked_only_for_a_model_on_device_auto():
    """Locally the answer imports torch (seconds): a lead or CPU-only run must not pay for it."""
    def never() -> bool:
        raise AssertionError("cluster_has_gpus asked")

    assert task_resources(LeadParams(), cluster_has_gpus=never)["num_gpus"] == 0
    assert task_resources(QLoRAParams(device="cpu"), cluster_has_gpus=never)["num_gpus"] == 0
    assert task_resources(QLoRAParams(device="cuda"), cluster_has_gpus=never)["num_gpus"] == 1


def test_launched_fold_reserves_num_processes_times_num_cpus():
    """launcher = "accelerate" runs num_processes processes of num_cpus threads each."""
    on_cpu = QLoRAParams(launcher="accelerate", num_processes=2, num_cpus=3, device="cpu")
    assert task_resources(on_cpu, cluster_has_gpus=lambda: True) == {"num_cpus": 6.0, "num_gpus": 0}
    seq2seq = Seq2SeqParams(launcher="accelerate", num_processes=2)
    assert task_resources(seq2seq, cluster_has_gpus=lambda: False) == {"num_cpus": 2.0, "num_gpus": 0}
    assert task_resources(seq2seq, cluster_has_gpus=lambda: True) == {"num_cpus": 2.0, "num_gpus": 2}
    unlaunched = QLoRAParams(num_processes=4, num_cpus=3)  # num_processes only counts under a launcher
    assert task_resources(unlaunched, cluster_has_gpus=lambda: False) == {"num_cpus": 3.0, "num_gpus": 0}


def test_ray_missing_says_how_to_install(monkeypatch, cli, korean_workspace):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayUnavailable, match=r"pip install -e \.\[ray\]"):
        make_executor("ray")
    (korean_workspace / "competition.toml").write_text('[candidates.lead]\nkind = "lead"\n', encoding="utf-8")
    assert cli(["folds", "build"], cwd=korean_workspace).exit_code == 0
    result = cli(["run", "lead", "--executor", "ray"], cwd=korean_workspace)
    assert result.exit_code == 2 and "pip install -e .[ray]" in result.output
    assert not (korean_workspace / "runs" / "lead").exists()


def test_ray_address_needs_ray_executor():
    with pytest.raises(ExecutorError, match="--executor ray"):
        make_executor("local", "auto")


@pytest.mark.slow
def test_ray_matches_local_byte_for_byte(ray_cluster, cli, tmp_path, korean_rows, tiny_causal_lm):
    import torch

    local = workspace(tmp_path / "local", korean_rows, tiny_causal_lm, cli)
    distributed = workspace(tmp_path / "ray", korean_rows, tiny_causal_lm, cli)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray gives each 1-CPU task one thread: same float sums as here
    try:
        result = cli(["run", *NAMES, "--executor", "local"], cwd=local)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    result = cli(["run", *NAMES, "--executor", "ray", "--json"], cwd=distributed)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert all(report[name]["ran"] == [0, 1, 2] and report[name]["complete"] for name in NAMES)

    expected, got = prediction_files(local), prediction_files(distributed)
    assert len(expected) == len(NAMES) * (FOLDS * 3 + 2)  # fold oof/test/dev + source test/dev
    assert got == expected
    assert (distributed / "runs" / "tiny" / "fold_2" / "work" / "adapter" / "adapter_model.safetensors").exists()

    again = cli(["run", *NAMES, "--executor", "ray", "--json"], cwd=distributed)
    assert all(json.loads(again.stdout)[name]["skipped"] == [0, 1, 2] for name in NAMES)


@pytest.mark.slow
def test_failed_task_is_reported_others_finish_and_rerun_resumes(ray_cluster, cli, tmp_path, korean_rows):
    root = workspace(tmp_path, korean_rows, "unused", cli)
    runs = root / "runs" / "lead"
    runs.mkdir(parents=True)
    (runs / "fold_1").write_text("a file where the fold folder goes: writing fold 1 fails")
    result = cli(["run", "lead", "retrieval", "--executor", "ray"], cwd=root)
    assert result.exit_code == 1
    assert "FAILED lead fold 1:" in result.output and "fold_1" in result.output
    assert "re-run the same command" in result.output
    for fold in (0, 2):
        assert (runs / f"fold_{fold}" / "meta.json").exists()
    assert (root / "runs" / "retrieval" / "test.csv").exists() and not (runs / "test.csv").exists()
    finished = {fold: json.loads((runs / f"fold_{fold}" / "meta.json").read_text())["finished_at"] for fold in (0, 2)}

    (runs / "fold_1").unlink()
    result = cli(["run", "lead", "retrieval", "--executor", "ray", "--json"], cwd=root)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lead"]["ran"] == [1] and report["lead"]["skipped"] == [0, 2] and report["lead"]["complete"]
    assert report["retrieval"]["ran"] == []
    assert {fold: json.loads((runs / f"fold_{fold}" / "meta.json").read_text())["finished_at"]
            for fold in (0, 2)} == finished
    assert (runs / "test.csv").exists()


class KillsItsWorker:
    """Unpickled inside the Ray worker, it ends that worker process at once (a crash, an OOM kill)."""

    def __reduce__(self):
        import os

        return os._exit, (1,)


@pytest.mark.slow
def test_killed_worker_is_reported_and_rerun_runs_only_that_fold(ray_cluster, cli, tmp_path, korean_rows):
    from competition.workspace.config import load_config
    from competition.run.executors import RayExecutor, jobs_for, run_jobs
    from competition.run.fold_run import prepare
    from competition.run.runner import finish_candidate, plan_candidate

    root = workspace(tmp_path, korean_rows, "unused", cli)
    context = prepare(load_config(root / "competition.toml"))
    wanted, settings, to_run, _ = plan_candidate(context, "lead", range(FOLDS), False, print)
    jobs = jobs_for(context.config, "lead", to_run, wanted, settings, cluster_has_gpus=lambda: False)
    jobs[1] = FoldJob(jobs[1].name, 1, wanted, {**settings, "crash": KillsItsWorker()})
    lines = []
    outcomes = list(run_jobs(RayExecutor(), context, jobs, progress=False, echo=lines.append))
    assert sorted(o.job.fold for o in outcomes if o.error is None) == [0, 2]
    plan, errors = lines[0], lines[1:]  # the plan is printed before any task runs
    assert plan == "ray plan: lead folds 0,1,2: 1 CPU, 0 GPUs each"
    assert len(errors) == 1 and errors[0].startswith("lead: fold 1 failed: ") and "Worker" in errors[0]
    report = finish_candidate(context, "lead", wanted, settings, [0, 2], [], False, print,
                              {o.job.fold: o.error for o in outcomes if o.error})
    assert report["folds_done"] == 2 and not report["complete"] and "1" in report["failed"]

    runs = root / "runs" / "lead"
    finished = {fold: json.loads((runs / f"fold_{fold}" / "meta.json").read_text())["finished_at"] for fold in (0, 2)}
    result = cli(["run", "lead", "--executor", "ray", "--json"], cwd=root)
    assert result.exit_code == 0, result.output
    # This test's own Ray driver (the module fixture, in this process) reports the killed worker on
    # sys.stdout from a background thread whenever the report arrives, possibly while the command
    # runs under CliRunner's capture: that line is the fixture's, not the command's output.
    lines = result.stdout.splitlines()
    strays = lines[:lines.index("{")]
    assert all("(raylet)" in line or "worker" in line.lower() for line in strays[:1]), strays
    assert json.loads("\n".join(lines[lines.index("{"):]))["lead"]["ran"] == [1]
    assert {fold: json.loads((runs / f"fold_{fold}" / "meta.json").read_text())["finished_at"]
            for fold in (0, 2)} == finished


class RecordsAssignedResources:
    """Unpickled inside the Ray worker, it writes the resources Ray gave the task to `path`, then
    fails the task before it trains anything."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        code = ("import json, ray; "
                f"open({self.path!r}, 'w').write(json.dumps(ray.get_runtime_context().get_assigned_resources())); "
                "raise RuntimeError('probe done')")
        return exec, (code,)


@pytest.mark.slow
def test_ray_task_gets_the_num_cpus_of_its_candidate(ray_cluster, tmp_path):
    from competition.workspace.config import load_config
    from competition.run.executors import RayExecutor, jobs_for, run_jobs

    (tmp_path / "competition.toml").write_text('[candidates.t5]\nkind = "seq2seq"\nnum_cpus = 2\n', encoding="utf-8")
    config = load_config(tmp_path / "competition.toml")
    probe = RecordsAssignedResources(tmp_path / "assigned.json")
    jobs = jobs_for(config, "t5", [0], {}, {"probe": probe}, cluster_has_gpus=lambda: False)
    assert (jobs[0].num_cpus, jobs[0].num_gpus) == (2.0, 0)
    outcomes = list(run_jobs(RayExecutor(), None, jobs, progress=False))
    assert outcomes[0].error and "probe done" in outcomes[0].error
    assert json.loads((tmp_path / "assigned.json").read_text()) == {"CPU": 2.0}


@pytest.mark.slow
def test_launched_fold_gets_num_processes_times_num_cpus_from_ray(ray_cluster, tmp_path):
    """On a real cluster the task of a 2-process launched fold holds 2 CPUs, and the plan says so
    before submitting."""
    from competition.workspace.config import load_config
    from competition.run.executors import RayExecutor, jobs_for, run_jobs

    (tmp_path / "competition.toml").write_text('[candidates.t5]\nkind = "seq2seq"\nlauncher = "accelerate"\n'
                                               'num_processes = 2\nnum_cpus = 1\n', encoding="utf-8")
    config = load_config(tmp_path / "competition.toml")
    probe = RecordsAssignedResources(tmp_path / "assigned.json")
    jobs = jobs_for(config, "t5", [0], {}, {"probe": probe}, cluster_has_gpus=lambda: False)
    lines = []
    outcomes = list(run_jobs(RayExecutor(), None, jobs, progress=False, echo=lines.append))
    assert lines[0] == "ray plan: t5 folds 0: 2 CPUs, 0 GPUs each"
    assert outcomes[0].error and "probe done" in outcomes[0].error
    assert json.loads((tmp_path / "assigned.json").read_text()) == {"CPU": 2.0}


@pytest.mark.slow
def test_plan_warns_when_no_node_can_hold_a_fold(ray_cluster):
    from competition.run.executors import RayExecutor

    lines = RayExecutor().plan([FoldJob("big", 0, {}, {}, num_cpus=3), FoldJob("big", 1, {}, {}, num_cpus=3)])
    assert lines[0] == "ray plan: big folds 0,1: 3 CPUs, 0 GPUs each"
    assert "warning: no node has 3 CPUs and 0 GPUs (largest: 2 CPUs, 0 GPUs)" in lines[1]


