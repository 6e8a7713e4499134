"""Where (candidate, fold) jobs run: here one after another (`local`) or as Ray tasks (`ray`).

A job is one fold's fit + predict through `runner.run_fold`, so both executors write the same
runs/NAME/fold_K/ files; with Ray the workspace must be on a filesystem every node sees at the
same path. Caching is decided before submission (finished folds never become jobs), so resume
rules are the runner's. The local executor stops at the first error (as `competition run`
always did); the Ray executor reports a failed task with its error and lets the others finish.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Iterator, Sequence

from .errors import CompetitionError

# Kinds that run a neural model here; they ask Ray for a GPU when they will use CUDA.
_MODEL_KINDS = {"qlora", "seq2seq", "prompt"}
EXECUTORS = ("local", "ray")


class ExecutorError(CompetitionError):
    """An executor cannot start (unknown name, Ray not installed, cluster unreachable)."""


@dataclasses.dataclass(frozen=True)
class FoldJob:
    """One unit of work: fit `name` on the other folds, predict fold `fold`, write fold_K/."""

    name: str
    fold: int
    wanted: dict  # the hashes the fold's meta.json must record (runner.fold_is_current)
    settings: dict  # candidate_settings(config, name), stored in meta.json
    num_cpus: float = 1
    num_gpus: float = 0


@dataclasses.dataclass
class JobResult:
    job: FoldJob
    meta: dict | None = None  # the fold's meta.json when it finished
    error: str | None = None  # "ExceptionType: message" when it failed


def task_resources(params, kind: str, cluster_has_gpus: bool) -> dict:
    """Ray resources one fold of a candidate needs: the kind's `num_cpus` (model kinds; 1 for the
    others), and GPUs for model kinds that will use CUDA.

    device "cuda" or require_cuda -> a GPU always; "auto" -> a GPU when the cluster has any;
    launcher = "accelerate" -> num_processes GPUs (one per process). Model-free kinds take none.
    """
    num_cpus = float(getattr(params, "num_cpus", 1) or 1)
    if kind not in _MODEL_KINDS:
        return {"num_cpus": num_cpus, "num_gpus": 0}
    device = getattr(params, "device", "auto")
    uses_cuda = device == "cuda" or getattr(params, "require_cuda", False) or (device == "auto" and cluster_has_gpus)
    if not uses_cuda:
        return {"num_cpus": num_cpus, "num_gpus": 0}
    gpus = int(getattr(params, "num_processes", 1) or 1) if getattr(params, "launcher", "none") == "accelerate" else 1
    return {"num_cpus": num_cpus, "num_gpus": gpus}


class LocalExecutor:
    """Runs jobs in this process, in order; the first failure propagates."""

    name = "local"

    def cluster_has_gpus(self) -> bool:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        return torch.cuda.is_available()

    def run(self, context, jobs: Sequence[FoldJob]) -> Iterator[JobResult]:
        from .runner import run_fold

        for job in jobs:
            yield JobResult(job, meta=run_fold(context, job.name, job.fold, job.wanted, job.settings))

    def close(self) -> None:
        return None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray: Ray is not installed: `pip install -e .[ray]` "
                            "(or `pip install 'ray>=2.9'`) on every node, or use --executor local") from None
    return ray


def _run_fold_task(context, name: str, fold: int, wanted: dict, settings: dict) -> dict:
    """Body of a Ray task (module level so workers import it by name)."""
    from .runner import run_fold

    return run_fold(context, name, fold, wanted, settings)


class RayExecutor:
    """Submits every job as a Ray task with its declared CPUs/GPUs; results come back as they finish.

    address None starts (or joins an already started) Ray in this process; "auto" joins the
    cluster started with `ray start` on this node; "HOST:PORT" joins a remote head.
    """

    name = "ray"

    def __init__(self, address: str | None = None, init_kwargs: dict | None = None):
        self.ray = _import_ray()
        self.started_here = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=True,
                              **(init_kwargs or {}))
            except ConnectionError as error:
                raise ExecutorError(f"--ray-address {address}: cannot reach a Ray cluster ({error}): "
                                    "start one with `ray start --head`, or leave out --ray-address") from None
            self.started_here = True

    def cluster_has_gpus(self) -> bool:
        return self.ray.cluster_resources().get("GPU", 0) > 0

    def run(self, context, jobs: Sequence[FoldJob]) -> Iterator[JobResult]:
        ray = self.ray
        if not jobs:
            return
        # max_retries=0: a crashed worker is reported, not silently re-run (the rerun resumes it).
        task = ray.remote(max_retries=0)(_run_fold_task)
        context_ref = ray.put(context)
        pending = {}
        for job in jobs:
            ref = task.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus,
                               name=f"{job.name}/fold_{job.fold}").remote(context_ref, job.name, job.fold,
                                                                          job.wanted, job.settings)
            pending[ref] = job
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield JobResult(job, meta=ray.get(ref))
                except Exception as error:  # the task's exception or a worker crash, both reported
                    yield JobResult(job, error=_describe(error))

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def _describe(error: BaseException) -> str:
    """One line for a failed task: the original exception type and message when Ray wrapped it."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    return f"{type(error).__name__}: {message}"[:500]


def make_executor(name: str, ray_address: str | None = None):
    """The executor called `name` ("local" or "ray")."""
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray-address only applies with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address)
    raise ExecutorError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")


def run_jobs(executor, context, jobs: Sequence[FoldJob], progress: bool = True,
             echo: Callable[[str], None] | None = None) -> list[JobResult]:
    """Run every job; the progress bar counts finished tasks (failed ones included)."""
    from tqdm import tqdm

    results = []
    with tqdm(total=len(jobs), desc=f"folds ({executor.name})", disable=not progress or not jobs,
              file=sys.stderr, leave=False) as bar:
        for result in executor.run(context, jobs):
            results.append(result)
            bar.update(1)
            if result.error and echo:
                echo(f"{result.job.name}: fold {result.job.fold} failed: {result.error}")
    return results


def jobs_for(config, name: str, folds: Sequence[int], wanted: dict, settings: dict,
             cluster_has_gpus: bool) -> list[FoldJob]:
    """One FoldJob per fold of candidate `name`, with the resources its kind and params declare."""
    candidate = config.candidate(name)
    resources = task_resources(candidate.params, candidate.kind, cluster_has_gpus)
    return [FoldJob(name, fold, wanted, settings, **resources) for fold in folds]
