"""Wall time of `competition run lead retrieval` with the local executor vs the Ray executor on the
Korean dev set as train (k folds), on this machine's cores (Ray: a local cluster, num_cpus = --cpus).

Run: .venv/bin/python bench/executors.py [--data ../shared/data] [--k 5] [--cpus 2]

Workspace (a temporary folder per executor): train = dialogsum-ko/dev.csv, test =
dialogsum-ko/test.csv, no dev hold-out. Each run is `runner.run_candidates` in a fresh workspace;
Ray's cluster start is timed separately from the run. Both runs' prediction files are compared.
Then the time a wrong address takes to fail, as a user runs it (`competition run lead --executor
ray --ray-address 127.0.0.1:1`, and a port that accepts but never answers, with --ray-timeout 5).
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[data]
train = "train.csv"
dev = ""

[cv]
k = {k}

[candidates.lead]
kind = "lead"

[candidates.retrieval]
kind = "retrieval"
"""


def make_workspace(root: Path, data: Path, k: int) -> Path:
    import pandas as pd

    (root / "data").mkdir(parents=True)
    train = pd.read_csv(data / "dialogsum-ko" / "dev.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(data / "dialogsum-ko" / "test.csv", dtype=str, keep_default_na=False)
    train.to_csv(root / "data" / "train.csv", index=False)
    test[["fname", "dialogue"]].to_csv(root / "data" / "test.csv", index=False)
    pd.DataFrame({"fname": test["fname"], "summary": ""}).to_csv(root / "data" / "sample_submission.csv", index=False)
    (root / "competition.toml").write_text(CONFIG.format(k=k), encoding="utf-8")
    return root


def timed_run(root: Path, executor: str) -> float:
    from competition.workspace.config import load_config
    from competition.data.loading import load_from_config
    from competition.data.folds import build_folds, labelled_rows
    from competition.run.runner import run_candidates

    config = load_config(root / "competition.toml")
    build_folds(config, labelled_rows(config, load_from_config(config)))
    start = time.perf_counter()
    results = run_candidates(config, ["lead", "retrieval"], progress=False, echo=lambda line: None, executor=executor)
    seconds = time.perf_counter() - start
    assert all(report["complete"] for report in results.values()), results
    return seconds


def time_to_fail(root: Path, *address_options: str) -> tuple[float, str]:
    """Seconds `competition run lead --executor ray ADDRESS_OPTIONS` takes to exit, and its stderr."""
    command = [str(Path(sys.executable).parent / "competition"), "run", "lead", "--executor", "ray", *address_options]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert completed.returncode == 2, completed.stderr
    return time.perf_counter() - start, completed.stderr.strip()


def prediction_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "runs").rglob("*.csv")) if "work" not in p.parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as folder:
        local = make_workspace(Path(folder) / "local", Path(args.data), args.k)
        distributed = make_workspace(Path(folder) / "ray", Path(args.data), args.k)
        local_s = timed_run(local, "local")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - start
        try:
            ray_s = timed_run(distributed, "ray")
        finally:
            ray.shutdown()
        same = prediction_bytes(local) == prediction_bytes(distributed)
        refused_s, refused = time_to_fail(local, "--ray-address", "127.0.0.1:1")
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("0.0.0.0", 0))
            silent.listen(16)
            silent_s, silent_message = time_to_fail(local, "--ray-address", f"127.0.0.1:{silent.getsockname()[1]}",
                                                    "--ray-timeout", "5")
    tasks = 2 * args.k
    print(f"lead + retrieval, k = {args.k} ({tasks} fold tasks), dialogsum-ko dev.csv as train, {args.cpus} CPUs")
    print(f"local executor:  {local_s:7.1f} s")
    print(f"ray executor:    {ray_s:7.1f} s  (+ {ray_start_s:.1f} s cluster start)")
    print(f"ratio local/ray: {local_s / ray_s:7.2f}x  (with start: {local_s / (ray_s + ray_start_s):.2f}x)")
    print(f"prediction files identical: {same}")
    print(f"wrong address 127.0.0.1:1 fails in {refused_s:.1f} s: {refused}")
    print(f"silent port, --ray-timeout 5, fails in {silent_s:.1f} s: {silent_message}")


if __name__ == "__main__":
    main()
