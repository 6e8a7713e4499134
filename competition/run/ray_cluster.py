"""Which Ray cluster a run uses, and connecting to it without hanging.

Without an address a private local cluster starts for the run and stops after it (RAY_ADDRESS and
clusters already running are ignored); with one, that cluster is joined within a timeout of our
own (Ray alone retries an unanswered address for minutes), and a refusal names Ray's reason and
its fix (token authentication, version mismatch, nothing listening). Ray's own messages while
connecting go to a log file, not the terminal.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import sys
import tempfile
import threading
import time

from ..errors import CompetitionError

DEFAULT_RAY_TIMEOUT = 30.0  # seconds a cluster given by --ray-address has to answer (--ray-timeout)
# Ray retries an unanswered connection 20 times (minutes); one attempt returns an auth or version
# refusal in milliseconds, and our own deadline bounds the rest.
_RAY_ATTEMPTS_VARIABLE = "RAY_gcs_server_port_wait_time_s"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class RayUnavailable(CompetitionError):
    """Ray is not installed, cannot start here, or the cluster at the address cannot be joined."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray: Ray is not installed: `pip install -e .[ray]` "
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
        size = f"{counted(self.nodes, 'node')}, {counted(self.cpus, 'CPU')}, {counted(self.gpus, 'GPU')}"
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
        self.ray = import_ray()
        self.started_here = False
        if self.ray.is_initialized():
            self.cluster = _cluster(self.ray, "in-process")
            return
        if timeout <= 0:
            raise RayUnavailable(f"--ray-timeout {timeout:g}: give a number of seconds above 0, e.g. 30")
        log_path = None if verbose else _new_log_path()
        try:
            with _ray_output_to(log_path):
                if address is None:
                    _start_private(self.ray)
                else:
                    _join(self.ray, address, timeout)
        except RayUnavailable as error:
            raise RayUnavailable(str(error) + _see_log(log_path)) from None
        self.started_here = True
        if log_path:
            os.unlink(log_path)
        self.cluster = _cluster(self.ray, "private" if address is None else "joined")

    def close(self) -> None:
        """Disconnect (and stop the private cluster) when this connection started Ray."""
        if self.started_here:
            self.ray.shutdown()
            self.started_here = False


def counted(value: float, unit: str) -> str:
    """ "1 CPU", "2 CPUs", "0 GPUs": for the lines that describe clusters and plans."""
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def _cluster(ray, how: str) -> RayCluster:
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return RayCluster(how, ray.get_runtime_context().gcs_address, nodes,
                      float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))


def _new_log_path() -> str:
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
        raise RayUnavailable(f"--executor ray: could not start a local Ray cluster ({type(error).__name__}: "
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
        raise RayUnavailable(f"--ray-address {address}: no answer from a Ray cluster within {timeout:g} s "
                             "(--ray-timeout): check the address (`ray status` on the head prints it) and that "
                             "its port is open to this machine") from None
    except Exception as error:
        with contextlib.suppress(Exception):
            ray.shutdown()  # a refusal after the connection began leaves half a driver behind
        raise RayUnavailable(f"--ray-address {address}: {ray_refusal(error)}") from None
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
        raise RayUnavailable(f"{where}: unknown host {host!r} ({error.strerror}): give the head node's "
                             "name or IP, or 'auto' on the head node itself") from None
    except (socket.timeout, TimeoutError):
        raise RayUnavailable(f"{where}: no answer from {host}:{port} within {timeout:g} s (--ray-timeout): "
                             "check the address and that the port is open to this machine") from None
    except ConnectionRefusedError:
        raise RayUnavailable(f"{where}: nothing listens at {host}:{port} (connection refused): check the "
                             "address (`ray status` on the head prints it), start the head with "
                             f"`ray start --head --port {port}`, or leave out --ray-address for a private "
                             "local cluster") from None
    except OSError as error:
        raise RayUnavailable(f"{where}: cannot reach {host}:{port} ({error.strerror or error}): check the "
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
