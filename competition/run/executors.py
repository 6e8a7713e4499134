"""Where (candidate, fold) jobs run: here one after another (`local`) or as Ray tasks (`ray`).

A job is one fold's fit + predict through `fold_run.run_fold`, so both executors write the same
runs/NAME/fold_K/ files; with Ray the workspace must be on a filesystem every node sees at the
same path. Caching is decided before submission (finished folds never become jobs), so resume
rules are the runner's, and the runner has one run path for both: `run_jobs` submits every job
and yields each result as it comes, so the runner finishes a candidate as soon as its folds have
all reported. The local executor runs a job only when its result is asked for and stops at the
first error (as `competition run` always did); the Ray executor reports a failed task with its
error and lets the others finish.

Which Ray cluster and how it is joined is ray_cluster's (RayConnection).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable, Iterator, Protocol, Sequence

from ..choices import EXECUTORS
from ..errors import CompetitionError
from ..models.params import Launch, Placement
from ..progress import progress as show_progress
from .fold_run import run_fold
from .ray_cluster import DEFAULT_RAY_TIMEOUT, RayConnection, counted


class ExecutorError(CompetitionError):
    """An unknown executor, or an option it does not take (ray_cluster.RayUnavailable: Ray's own)."""


@dataclasses.dataclass(frozen=True)
class FoldJob:
    """One unit of work: fit `name` on the other folds, predict fold `fold`, write fold_K/."""

    name: str
    fold: int
    wanted: dict  # the hashes the fold's meta.json must record (provenance.fold_is_current)
    settings: dict  # candidate_settings(config, name), stored in meta.json
    num_cpus: float = 1
    num_gpus: float = 0


@dataclasses.dataclass
class JobResult:
    job: FoldJob
    meta: dict | None = None  # the fold's meta.json when it finished
    error: str | None = None  # "ExceptionType: message" when it failed


class Executor(Protocol):
    """What the runner needs from a place that runs FoldJobs."""

    name: str  # as given to --executor
    where: str  # where the jobs run, for messages: "this machine", "the Ray cluster"

    def cluster_has_gpus(self) -> bool: ...

    def plan(self, jobs: Sequence[FoldJob]) -> list[str]:
        """Lines to print before submitting (what each job reserves)."""

    def run(self, context, jobs: Sequence[FoldJob]) -> Iterator[JobResult]:
        """Submit the jobs; their results in the order they finish."""

    def close(self) -> None: ...


def task_resources(params, cluster_has_gpus: Callable[[], bool]) -> dict:
    """Ray resources one fold of a candidate really uses, so folds never oversubscribe a node.

    Read from the parts its Params declare (candidates/parts.py), so a new kind gets them without
    an entry here: a kind that places a model (Placement) is one process with `num_cpus` threads,
    or with launcher = "accelerate" (Launch) `num_processes` processes of `num_cpus` threads, so
    num_processes x num_cpus CPUs; it takes one GPU per process when it will use CUDA (device "cuda"
    or require_cuda always, "auto" when the cluster has GPUs). Any other kind takes 1 CPU, no GPU.
    `cluster_has_gpus` is asked only for device "auto" (locally the answer costs importing torch).
    """
    if not isinstance(params, Placement):
        return {"num_cpus": 1.0, "num_gpus": 0}
    processes = params.num_processes if isinstance(params, Launch) and params.launcher == "accelerate" else 1
    uses_cuda = params.device == "cuda" or params.require_cuda or (params.device == "auto" and cluster_has_gpus())
    return {"num_cpus": float(params.num_cpus) * processes, "num_gpus": processes if uses_cuda else 0}


class LocalExecutor:
    """Runs jobs in this process, in order, each when its result is asked for; the first failure
    propagates."""

    name = "local"
    where = "this machine"

    def cluster_has_gpus(self) -> bool:
        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        return torch.cuda.is_available()

    def plan(self, jobs: Sequence[FoldJob]) -> list[str]:
        """Nothing to reserve: the folds run one after another in this process."""
        return []

    def run(self, context, jobs: Sequence[FoldJob]) -> Iterator[JobResult]:
        for job in jobs:
            yield JobResult(job, meta=run_fold(context, job.name, job.fold, job.wanted, job.settings))

    def close(self) -> None:
        return None


def _run_fold_task(context, name: str, fold: int, wanted: dict, settings: dict) -> dict:
    """Body of a Ray task (module level so workers import it by name)."""
    return run_fold(context, name, fold, wanted, settings)


class RayExecutor:
    """Submits every job as a Ray task with its declared CPUs/GPUs; results come back as they finish.

    Connects through ray_cluster.RayConnection (address None / "auto" / "HOST:PORT"); close()
    stops only what that connection started.
    """

    name = "ray"
    where = "the Ray cluster"

    def __init__(self, address: str | None = None, timeout: float = DEFAULT_RAY_TIMEOUT, verbose: bool = False):
        self.connection = RayConnection(address, timeout, verbose)
        self.ray = self.connection.ray

    def cluster_has_gpus(self) -> bool:
        return self.ray.cluster_resources().get("GPU", 0) > 0

    def plan(self, jobs: Sequence[FoldJob]) -> list[str]:
        """One line per candidate: its folds and what each fold's task reserves; a warning when no
        node is big enough (Ray would wait for one forever)."""
        by_name: dict[str, list[FoldJob]] = {}
        for job in jobs:
            by_name.setdefault(job.name, []).append(job)
        nodes = [node.get("Resources", {}) for node in self.ray.nodes() if node.get("Alive")]
        lines = []
        for name, mine in by_name.items():
            job = mine[0]
            folds = ",".join(str(j.fold) for j in mine)
            lines.append(f"ray plan: {name} folds {folds}: {counted(job.num_cpus, 'CPU')}, "
                         f"{counted(job.num_gpus, 'GPU')} each")
            if nodes and not any(node.get("CPU", 0) >= job.num_cpus and node.get("GPU", 0) >= job.num_gpus
                                 for node in nodes):
                largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)))
                lines.append(f"ray plan: warning: no node has {counted(job.num_cpus, 'CPU')} and "
                             f"{counted(job.num_gpus, 'GPU')} (largest: {counted(largest.get('CPU', 0), 'CPU')}, "
                             f"{counted(largest.get('GPU', 0), 'GPU')}); {name}'s "
                             "folds wait until one joins: lower num_cpus or num_processes, or add a bigger node")
        return lines

    def run(self, context, jobs: Sequence[FoldJob]) -> Iterator[JobResult]:
        """Submits every job now (not when the first result is asked for), so the runner's work
        between results overlaps the tasks."""
        ray = self.ray
        if not jobs:
            return iter(())
        # max_retries=0: a crashed worker is reported, not silently re-run (the rerun resumes it).
        task = ray.remote(max_retries=0)(_run_fold_task)
        context_ref = ray.put(context)
        pending = {}
        for job in jobs:
            ref = task.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus,
                               name=f"{job.name}/fold_{job.fold}").remote(context_ref, job.name, job.fold,
                                                                          job.wanted, job.settings)
            pending[ref] = job
        return self._as_finished(pending)

    def _as_finished(self, pending: dict) -> Iterator[JobResult]:
        ray = self.ray
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield JobResult(job, meta=ray.get(ref))
                except Exception as error:  # the task's exception or a worker crash, both reported
                    yield JobResult(job, error=_describe(error))

    def close(self) -> None:
        self.connection.close()


def _describe(error: BaseException) -> str:
    """One line for a failed task: the original exception type and message when Ray wrapped it."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    return f"{type(error).__name__}: {message}"[:500]


def make_executor(name: str, ray_address: str | None = None) -> Executor:
    """The executor called `name` ("local" or "ray")."""
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray-address only applies with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address)
    raise ExecutorError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")


def run_jobs(executor: Executor, context, jobs: Sequence[FoldJob], progress: bool = True,
             echo: Callable[[str], None] | None = None) -> Iterator[JobResult]:
    """Print the executor's plan, submit every job, and yield each result as it finishes (a failed
    one is also echoed); the progress bar counts finished jobs, failed ones included."""
    if echo:
        for line in executor.plan(jobs):
            echo(line)
    return _counted(executor.run(context, jobs), len(jobs), f"folds ({executor.name})", progress, echo)


def _counted(results: Iterator[JobResult], total: int, desc: str, progress: bool,
             echo: Callable[[str], None] | None) -> Iterator[JobResult]:
    with show_progress(total=total, desc=desc, unit="folds", enabled=progress and bool(total)) as bar:
        for result in results:
            bar.update(1)
            if result.error and echo:
                echo(f"{result.job.name}: fold {result.job.fold} failed: {result.error}")
            yield result


def jobs_for(config, name: str, folds: Sequence[int], wanted: dict, settings: dict,
             cluster_has_gpus: Callable[[], bool]) -> list[FoldJob]:
    """One FoldJob per fold of candidate `name`, with the resources its kind and params declare
    (task_resources)."""
    candidate = config.candidate(name)
    resources = task_resources(candidate.params, cluster_has_gpus)
    return [FoldJob(name, fold, wanted, settings, **resources) for fold in folds]
