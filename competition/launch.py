"""Multi-GPU training for one fold: `launcher = "accelerate"` runs the candidate's fit under
`accelerate launch` (DDP by default; an FSDP or DeepSpeed config file is passed through).

The subprocess (`python -m competition.train_fold`) trains and saves the adapter/model into the
fold's workdir; the runner then calls `fit` in its own process, which finds the finished training
(same fingerprint) and only loads it, and predicts as usual.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .errors import ConfigError

LAUNCHERS = ("none", "accelerate")


class LaunchFailed(RuntimeError):
    """The `accelerate launch` subprocess exited with an error."""


def accelerate_command(config_path: str | Path, candidate: str, fold: int | None, num_processes: int,
                       accelerate_config: str | Path | None = None, data_dir: str | Path | None = None,
                       python: str = sys.executable, main_process_port: int | None = None) -> list[str]:
    """The `accelerate launch ... -m competition.train_fold ...` argv that trains one fold.

    fold None trains the refit model (all labelled rows). Without an accelerate config file,
    more than one process means plain multi-GPU DDP (--multi_gpu); with one, the file decides
    (FSDP, DeepSpeed, mixed precision) and --num_processes still sets the process count.
    """
    if num_processes < 1:
        raise ConfigError(f"candidate {candidate!r}: num_processes = {num_processes}: give 1 or more "
                          "(usually the number of GPUs on the machine)")
    command = [python, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        command += ["--config_file", str(accelerate_config)]
    elif num_processes > 1:
        command += ["--multi_gpu"]
    command += ["--num_processes", str(num_processes), "--num_machines", "1"]
    if main_process_port is not None:
        command += ["--main_process_port", str(main_process_port)]
    command += ["-m", "competition.train_fold", "--config", str(config_path), "--candidate", candidate,
                "--fold", "refit" if fold is None else str(fold)]
    if data_dir is not None:
        command += ["--data", str(data_dir)]
    return command


def launcher_of(params) -> str:
    """The candidate's launcher ("none" for kinds without the option)."""
    launcher = getattr(params, "launcher", "none") or "none"
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher = {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    return launcher


def command_for(config, name: str, fold: int | None, data_dir: str | Path | None = None) -> list[str]:
    """accelerate_command for candidate `name` from its params (paths resolved in the workspace)."""
    params = config.candidate(name).params
    if config.path is None:
        raise ConfigError(f"candidate {name!r}: launcher = \"accelerate\" needs a competition.toml on disk "
                          "(the launched processes read it): save the config to a file")
    accelerate_config = getattr(params, "accelerate_config", "") or None
    if accelerate_config:
        resolved = config.resolve(accelerate_config)
        if not resolved.exists():
            raise ConfigError(f"candidate {name!r}: accelerate_config = {accelerate_config!r}: {resolved} not found: "
                              "write one with `accelerate config --config_file PATH` or leave it empty for DDP")
        accelerate_config = resolved
    num_processes = int(getattr(params, "num_processes", 1))
    # Several folds may train on one node at once (--executor ray): each needs its own rendezvous port.
    port = free_port() if num_processes > 1 else None
    return accelerate_command(config.path, name, fold, num_processes, accelerate_config, data_dir=data_dir,
                              main_process_port=port)


def free_port() -> int:
    """A TCP port nobody listens on now (for torch.distributed's rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_launcher(command: Sequence[str], cwd: str | Path | None = None) -> None:
    """Run the launch command, streaming its output; LaunchFailed names the command on error."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(list(command), cwd=cwd, env=environment)
    if completed.returncode != 0:
        raise LaunchFailed(f"`{' '.join(command)}` exited with code {completed.returncode}")
