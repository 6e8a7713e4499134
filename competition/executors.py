"""Where (candidate, fold) jobs run: here one after another (`local`) or as Ray tasks (`ray`).

A job is one fold's fit + predict through `runner.run_fold`, so both executors write the same
runs/NAME/fold_K/ files; with Ray the workspace must be on a filesystem every node sees at the
same path. Caching is decided before submission (finished folds never become jobs), so resume
rules are the runner's. The local executor stops at the first error (as `competition run`
always did); the Ray executor reports a failed task with its error and lets the others finish.

Which Ray: without an address a private local cluster starts and stops with the run (RAY_ADDRESS
and clusters already running are ignored); with one, that cluster is joined within a timeout of
our own, and a refusal names Ray's reason (RayConnection).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

from .errors import CompetitionError
from .launch import launcher_of

# Kinds that run a neural model here; they ask Ray for a GPU when they will use CUDA.
_MODEL_KINDS = {"qlora", "seq2seq", "prompt"}
EXECUTORS = ("local", "ray")
DEFAULT_RAY_TIMEOUT = 30.0  # seconds a cluster given by --ray-address has to answer (--ray-timeout)
# Ray retries an unanswered connection 20 times (minutes); one attempt returns an auth or version
# refusal in milliseconds, and our own deadline bounds the rest.
_RAY_ATTEMPTS_VARIABLE = "RAY_gcs_server_port_wait_time_s"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


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
    """Ray resources one fold of a candidate really uses, so folds never oversubscribe a node.

    A fold is one process with `num_cpus` threads (model kinds; 1 for the others); with
    launcher = "accelerate" it is `num_processes` processes of `num_cpus` threads each, so
    num_processes x num_cpus CPUs. Model kinds that will use CUDA take one GPU per process:
    device "cuda" or require_cuda always, "auto" when the cluster has GPUs. Model-free kinds take none.
    """
    num_cpus = float(getattr(params, "num_cpus", 1) or 1)
    if kind not in _MODEL_KINDS:
        return {"num_cpus": num_cpus, "num_gpus": 0}
    processes = int(getattr(params, "num_processes", 1) or 1) if launcher_of(params) == "accelerate" else 1
    device = getattr(params, "device", "auto")
    uses_cuda = device == "cuda" or getattr(params, "require_cuda", False) or (device == "auto" and cluster_has_gpus)
    return {"num_cpus": num_cpus * processes, "num_gpus": processes if uses_cuda else 0}


class LocalExecutor:
    """Runs jobs in this process, in order; the first failure propagates."""

    name = "local"

    def cluster_has_gpus(self) -> bool:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        return torch.cuda.is_available()

    def plan(self, jobs: Sequence[FoldJob]) -> list[str]:
        """Nothing to reserve: the folds run one after another in this process."""
        return []

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


@dataclasses.dataclass(frozen=True)
class RayCluster:
    """The cluster a run used: `how` is "private" (started for the run, stopped after it),
    "joined" (--ray-address) or "in-process" (Ray this process had already started)."""

    how: str
    address: str
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        """The first line a Ray run prints."""
        size = f"{_count(self.nodes, 'node')}, {_count(self.cpus, 'CPU')}, {_count(self.gpus, 'GPU')}"
        if self.how == "private":
            return (f"ray: started a private local cluster at {self.address} ({size}); it stops after the run "
                    "(--ray-address auto joins the cluster `ray start` runs on this node)")
        if self.how == "joined":
            return f"ray: joined the cluster at {self.address} ({size})"
        return f"ray: using the Ray this process already runs at {self.address} ({size})"

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


class RayConnection:
    """Ray in this process for one run, and the RayCluster it is.

    address None starts a private local cluster (ray.init(address="local"): RAY_ADDRESS and
    running clusters are ignored) and close() stops it; "auto" joins the cluster `ray start` runs
    on this node (or RAY_ADDRESS); "HOST:PORT" joins that head. A join gives up after `timeout`
    seconds. Ray already started in this process (a notebook, a test) is used as it is. Ray's own
    messages while connecting go to a log file named in the error (or to stderr with verbose).
    """

    def __init__(self, address: str | None = None, timeout: float = DEFAULT_RAY_TIMEOUT, verbose: bool = False):
        self.ray = _import_ray()
        self.started_here = False
        if self.ray.is_initialized():
            self.cluster = _cluster(self.ray, "in-process")
            return
        if timeout <= 0:
            raise ExecutorError(f"--ray-timeout {timeout:g}: give a number of seconds above 0, e.g. 30")
        log_path = None if verbose else _new_log_path()
        try:
            with _ray_output_to(log_path):
                if address is None:
                    _start_private(self.ray)
                else:
                    _join(self.ray, address, timeout)
        except ExecutorError as error:
            raise ExecutorError(str(error) + _see_log(log_path)) from None
        self.started_here = True
        if log_path:
            os.unlink(log_path)
        self.cluster = _cluster(self.ray, "private" if address is None else "joined")

    def close(self) -> None:
        """Disconnect (and stop the private cluster) when this connection started Ray."""
        if self.started_here:
            self.ray.shutdown()
            self.started_here = False


def _count(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def _cluster(ray, how: str) -> RayCluster:
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return RayCluster(how, ray.get_runtime_context().gcs_address, nodes,
                      float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))


def _new_log_path() -> str:
    import tempfile

    handle, path = tempfile.mkstemp(prefix="competition-ray-", suffix=".log")
    os.close(handle)
    return path


def _see_log(log_path: str | None) -> str:
    """Where Ray's messages of a failed connection are (an empty log is removed)."""
    if not log_path:
        return ""
    if not os.path.getsize(log_path):
        os.unlink(log_path)
        return ""
    return f" (Ray's own messages: {log_path}, or add --verbose)"


@contextlib.contextmanager
def _ray_output_to(log_path: str | None):
    """Send Ray's output while connecting to `log_path` (None: leave it on stderr). Ray writes from
    Python (the "ray" logger follows sys.stderr) and from its C++ core straight to file
    descriptors 1 and 2, so both levels are redirected; stdout never carries it (--json)."""
    if log_path is None:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def _start_private(ray) -> None:
    """A new local cluster with this machine's CPUs and GPUs, whatever else runs (address "local").
    Not bounded by --ray-timeout: stopping a start midway would orphan the processes it spawned."""
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    except Exception as error:
        with contextlib.suppress(Exception):
            ray.shutdown()
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise ExecutorError(f"--executor ray: could not start a local Ray cluster ({type(error).__name__}: "
                            f"{lines[-1] if lines else ''}): join a running one with --ray-address, or use "
                            "--executor local") from None


def _join(ray, address: str, timeout: float) -> None:
    """ray.init(address) that fails within `timeout` seconds with Ray's reason and its fix."""
    deadline = time.monotonic() + timeout
    _probe(ray, address, timeout)
    previous = os.environ.get(_RAY_ATTEMPTS_VARIABLE)
    if previous is None:
        os.environ[_RAY_ATTEMPTS_VARIABLE] = "1"
    try:
        _init_within(ray, max(deadline - time.monotonic(), 0.1),
                     address=address, include_dashboard=False, log_to_driver=True)
    except TimeoutError:
        raise ExecutorError(f"--ray-address {address}: no answer from a Ray cluster within {timeout:g} s "
                            "(--ray-timeout): check the address (`ray status` on the head prints it) and that "
                            "its port is open to this machine") from None
    except Exception as error:
        with contextlib.suppress(Exception):
            ray.shutdown()  # a refusal after the connection began leaves half a driver behind
        raise ExecutorError(f"--ray-address {address}: {ray_refusal(error)}") from None
    finally:
        if previous is None:
            os.environ.pop(_RAY_ATTEMPTS_VARIABLE, None)


def _probe(ray, address: str, timeout: float) -> None:
    """Fail at once when nothing listens at a HOST:PORT address (refused, unknown host) or it
    stays silent for `timeout` s; Ray itself would retry for minutes. "auto" is left to Ray."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return
    if host in _LOOPBACK:
        host = ray.util.get_node_ip_address()  # Ray connects to this node's address, not loopback
    where = f"--ray-address {address}"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except socket.gaierror as error:
        raise ExecutorError(f"{where}: unknown host {host!r} ({error.strerror}): give the head node's "
                            "name or IP, or 'auto' on the head node itself") from None
    except (socket.timeout, TimeoutError):
        raise ExecutorError(f"{where}: no answer from {host}:{port} within {timeout:g} s (--ray-timeout): "
                            "check the address and that the port is open to this machine") from None
    except ConnectionRefusedError:
        raise ExecutorError(f"{where}: nothing listens at {host}:{port} (connection refused): check the "
                            "address (`ray status` on the head prints it), start the head with "
                            f"`ray start --head --port {port}`, or leave out --ray-address for a private "
                            "local cluster") from None
    except OSError as error:
        raise ExecutorError(f"{where}: cannot reach {host}:{port} ({error.strerror or error}): check the "
                            "address and the network") from None


def _init_within(ray, timeout: float, **init_kwargs) -> None:
    """ray.init(**init_kwargs), given up after `timeout` s (TimeoutError). It runs in a helper
    thread since a hung connection cannot be interrupted; one that succeeds after we gave up
    disconnects again, so nothing is left connected behind the error."""
    outcome: dict = {}
    lock = threading.Lock()

    def connect() -> None:
        try:
            ray.init(**init_kwargs)
        except BaseException as error:  # handed to the caller below
            with lock:
                outcome["error"] = error
            return
        with lock:
            if outcome.get("abandoned"):
                ray.shutdown()
            else:
                outcome["connected"] = True

    thread = threading.Thread(target=connect, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if "error" in outcome:
            raise outcome["error"]
        if not outcome.get("connected"):
            outcome["abandoned"] = True
            raise TimeoutError(f"ray.init gave no answer within {timeout:g} s")


def ray_refusal(error: BaseException) -> str:
    """Ray's reason a connection failed and its fix, on one line. Ray hides the reason in the
    traceback text of the exception's cause (ConnectionError from RuntimeError)."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    text = "\n".join(chain)
    # The innermost "SomeError: message" line is Ray's own reason.
    reasons = re.findall(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Timeout)\w*: .+)$", text, flags=re.MULTILINE)
    reason = reasons[-1] if reasons else " ".join(text.split())
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "Unauthenticated" in text:
        reason = reason.split(". ")[0]
        return (f"the cluster refused this process's token (Ray: {reason}): it uses token authentication; set "
                "RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
                "(`ray get-auth-token` on the head prints it), or use --ray-address auto on the head node")
    if "Version mismatch" in text:
        versions = " ".join(text[text.index("Version mismatch"):].split("\nTraceback")[0].split())
        return (f"Ray or Python differ between the cluster and this process ({versions[:400]}): install the "
                "cluster's Ray and Python versions here, or run from a node of the cluster")
    if "Could not find any running Ray instance" in text:
        return ("no running Ray cluster found on this node: start one with `ray start --head`, give HOST:PORT "
                "of a remote head, or leave out --ray-address for a private local cluster")
    if "Invalid address format" in text or "Port is not specified" in text:
        return f"not an address Ray understands ({reason}): give HOST:PORT of the head, or 'auto' on the head node"
    if "Timed out" in text or "Failed to connect" in text:
        return (f"no Ray cluster answers there (Ray: {reason[:300]}): check the address (`ray status` on the "
                "head prints it)")
    return f"Ray refused the connection ({reason[:300]})"


def _run_fold_task(context, name: str, fold: int, wanted: dict, settings: dict) -> dict:
    """Body of a Ray task (module level so workers import it by name)."""
    from .runner import run_fold

    return run_fold(context, name, fold, wanted, settings)


class RayExecutor:
    """Submits every job as a Ray task with its declared CPUs/GPUs; results come back as they finish.

    Connects through RayConnection (see there for address None / "auto" / "HOST:PORT"); close()
    stops only what that connection started.
    """

    name = "ray"

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
            lines.append(f"ray plan: {name} folds {folds}: {_count(job.num_cpus, 'CPU')}, "
                         f"{_count(job.num_gpus, 'GPU')} each")
            if nodes and not any(node.get("CPU", 0) >= job.num_cpus and node.get("GPU", 0) >= job.num_gpus
                                 for node in nodes):
                largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)))
                lines.append(f"ray plan: warning: no node has {_count(job.num_cpus, 'CPU')} and "
                             f"{_count(job.num_gpus, 'GPU')} (largest: {_count(largest.get('CPU', 0), 'CPU')}, "
                             f"{_count(largest.get('GPU', 0), 'GPU')}); {name}'s "
                             "folds wait until one joins: lower num_cpus or num_processes, or add a bigger node")
        return lines

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
        self.connection.close()


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
    """Run every job, after printing the executor's plan; the progress bar counts finished tasks
    (failed ones included)."""
    from tqdm import tqdm

    if echo:
        for line in executor.plan(jobs):
            echo(line)
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
