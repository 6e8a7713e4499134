"""Which Ray cluster a run uses and joining it (competition.run.ray_cluster), run as a user runs
`competition run --executor ray` (a fresh Python per run): a wrong address fails within the
timeout in one line with Ray's reason and its fix, a head with token authentication (`ray start
--head`) refuses a driver without the token, the first line and --json name the cluster, and
without --ray-address a private cluster starts even with RAY_ADDRESS set."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import write_workspace

from competition.run.ray_cluster import DEFAULT_RAY_TIMEOUT

FOLDS = 3


@pytest.fixture(scope="module")
def token_cluster():
    """A head started as a user does (`ray start --head`) with token authentication and a token of
    its own, in a temp dir of its own so no other driver on the machine finds it; `--block` keeps
    the command in the foreground, and terminating it stops the cluster. Yields (address, token)."""
    from competition.models.launch import free_port

    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    token = secrets.token_hex(16)
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--port", str(free_port()), "--num-cpus", "1", "--temp-dir", temp_dir,
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=ray_free_environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address_file = Path(temp_dir) / "ray_current_cluster"  # written once the head is up
    deadline = time.monotonic() + 120
    while not (address_file.exists() and address_file.read_text().strip()):
        if head.poll() is not None or time.monotonic() > deadline:
            head.kill()
            pytest.fail(f"`ray start --head` did not come up (exit code {head.poll()})")
        time.sleep(0.5)
    yield address_file.read_text().strip(), token
    head.terminate()
    try:
        head.wait(timeout=90)
    except subprocess.TimeoutExpired:
        head.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def ray_free_environment(**variables) -> dict:
    """This environment without RAY_* variables (Ray sets RAY_AUTH_MODE in a process that started
    a cluster), plus `variables`."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    return {**environment, **variables}


def run_in_subprocess(args, cwd, environment: dict, before_main: str = "", timeout: float = 300):
    """`competition ARGS` in a fresh Python (no Ray started in it yet): (completed, seconds)."""
    code = before_main + "from competition.cli import main\nmain()\n"
    start = time.monotonic()
    completed = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=environment,
                               capture_output=True, text=True, timeout=timeout)
    return completed, time.monotonic() - start


def lead_workspace(root, korean_rows, cli):
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    write_workspace(root, korean_rows, test, None, f'[cv]\nk = {FOLDS}\n\n[candidates.lead]\nkind = "lead"\n')
    assert cli(["folds", "build"], cwd=root).exit_code == 0
    return root


def test_ray_timeout_is_refused_where_nothing_is_joined(cli, korean_workspace):
    (korean_workspace / "competition.toml").write_text('[candidates.lead]\nkind = "lead"\n', encoding="utf-8")
    result = cli(["run", "lead", "--ray-timeout", "5"], cwd=korean_workspace)
    assert result.exit_code == 2 and "--ray-timeout only applies with --executor ray" in result.output
    result = cli(["run", "lead", "--executor", "ray", "--ray-timeout", "5"], cwd=korean_workspace)
    assert result.exit_code == 2 and "add --ray-address" in result.output
    result = cli(["run", "lead", "--executor", "ray", "--ray-address", "auto", "--ray-timeout", "0"],
                 cwd=korean_workspace)
    assert result.exit_code == 2 and "--ray-timeout" in result.output


@pytest.mark.slow
def test_wrong_address_fails_within_the_timeout_in_one_line(cli, tmp_path, korean_rows):
    """An address where nothing listens fails within the Ray timeout, in one line on stderr (Ray's
    own warnings kept out), exit 2, nothing run."""
    root = lead_workspace(tmp_path, korean_rows, cli)
    completed, seconds = run_in_subprocess(["run", "lead", "--executor", "ray", "--ray-address", "127.0.0.1:1"],
                                           root, ray_free_environment(), timeout=DEFAULT_RAY_TIMEOUT + 60)
    assert completed.returncode == 2, completed.stderr
    assert seconds < DEFAULT_RAY_TIMEOUT
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]  # Ray's warnings kept out
    assert "--ray-address 127.0.0.1:1: nothing listens at" in completed.stderr
    assert "connection refused" in completed.stderr
    assert not (root / "runs" / "lead").exists()


@pytest.mark.slow
def test_silent_address_gives_up_at_ray_timeout(cli, tmp_path, korean_rows):
    """A port that accepts connections but never answers Ray (one attempt of Ray's takes ~40 s)."""
    root = lead_workspace(tmp_path, korean_rows, cli)
    with socket.socket() as silent:
        silent.bind(("0.0.0.0", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        completed, seconds = run_in_subprocess(["run", "lead", "--executor", "ray", "--ray-address",
                                                f"127.0.0.1:{port}", "--ray-timeout", "3"],
                                               root, ray_free_environment(), timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert seconds < 3 + 20  # the timeout plus starting Python and importing Ray on a busy machine
    assert f"--ray-address 127.0.0.1:{port}: no answer from a Ray cluster within 3 s (--ray-timeout)" in completed.stderr
    log = completed.stderr.split("Ray's own messages: ")[1].split(",")[0]
    assert "Connecting to existing Ray cluster" in Path(log).read_text()  # Ray's output went to the log
    Path(log).unlink()


@pytest.mark.slow
def test_token_cluster_refusal_names_ray_cause_and_fix(token_cluster, cli, tmp_path, korean_rows):
    """`ray start --head` uses token auth, and a driver given the address sends no token."""
    address, _ = token_cluster
    root = lead_workspace(tmp_path, korean_rows, cli)
    completed, seconds = run_in_subprocess(["run", "lead", "--executor", "ray", "--ray-address", address],
                                           root, ray_free_environment(), timeout=DEFAULT_RAY_TIMEOUT + 60)
    assert completed.returncode == 2, completed.stderr
    assert seconds < DEFAULT_RAY_TIMEOUT
    message = completed.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "InvalidAuthToken" in message and "RAY_AUTH_MODE=token" in message and "--ray-address auto" in message
    assert "start one" not in message and "ray start --head" not in message  # the cluster is running
    Path(message.split("Ray's own messages: ")[1].split(",")[0]).unlink()


@pytest.mark.slow
def test_version_mismatch_is_named(token_cluster, cli, tmp_path, korean_rows):
    """A driver whose Ray version differs from the cluster's (faked in the driver) is told so."""
    address, token = token_cluster
    root = lead_workspace(tmp_path, korean_rows, cli)
    fake_version = ("import ray._private.utils as utils\nreal = utils.compute_version_info\n"
                    "utils.compute_version_info = lambda: ('1.0.0', real()[1])\n")
    completed, _ = run_in_subprocess(["run", "lead", "--executor", "ray", "--ray-address", address], root,
                                     ray_free_environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
                                     before_main=fake_version)
    assert completed.returncode == 2, completed.stderr
    assert "Version mismatch" in completed.stderr and "Ray: 1.0.0" in completed.stderr
    assert "install the cluster's Ray and Python versions here" in completed.stderr
    Path(completed.stderr.split("Ray's own messages: ")[1].split(",")[0]).unlink()


@pytest.mark.slow
def test_joined_cluster_is_named_first_and_in_json(token_cluster, cli, tmp_path, korean_rows):
    address, token = token_cluster
    root = lead_workspace(tmp_path, korean_rows, cli)
    completed, _ = run_in_subprocess(["run", "lead", "--folds", "0", "--executor", "ray", "--ray-address", address,
                                      "--json"], root, ray_free_environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.splitlines()[0] == f"ray: joined the cluster at {address} (1 node, 1 CPU, 0 GPUs)"
    assert "ray plan: lead folds 0: 1 CPU, 0 GPUs each" in completed.stderr
    report = json.loads(completed.stdout)["lead"]
    assert report["ran"] == [0]
    assert report["cluster"] == {"how": "joined", "address": address, "nodes": 1, "cpus": 1.0, "gpus": 0.0}


@pytest.mark.slow
def test_default_starts_a_private_cluster_even_with_ray_address_set(token_cluster, cli, tmp_path, korean_rows):
    """Without --ray-address the run starts its own cluster: RAY_ADDRESS (and the running head) are
    not joined, as the README says."""
    address, token = token_cluster
    root = lead_workspace(tmp_path, korean_rows, cli)
    completed, _ = run_in_subprocess(["run", "lead", "--folds", "0", "--executor", "ray", "--json"], root,
                                     ray_free_environment(RAY_ADDRESS=address, RAY_AUTH_MODE="token",
                                                          RAY_AUTH_TOKEN=token))
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.splitlines()[0].startswith("ray: started a private local cluster at ")
    cluster = json.loads(completed.stdout)["lead"]["cluster"]
    assert cluster["how"] == "private" and cluster["address"] != address
