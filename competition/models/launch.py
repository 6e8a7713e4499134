"""Multi-GPU training for one fold: `launcher = "accelerate"` runs the candidate's fit under
`accelerate launch` (DDP by default; an FSDP or DeepSpeed config file is passed through).

The subprocess (`python -m competition.run.train_fold`) trains and saves the adapter/model into the
fold's workdir; the runner then calls `fit` in its own process, which finds the finished training
(same fingerprint) and only loads it, and predicts as usual.

A user mistake in a launched rank comes back as the one line the rank wrote to the file named by
COMPETITION_ERROR_FILE (LaunchRefused, exit code 2 in the CLI); the launcher runs through
`python -m competition.models.launch`, which keeps accelerate and torchrun from adding tracebacks to it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import CompetitionError, ConfigError
from ..files import atomic_write_text
from .params import Launch

# Where a launched rank writes the one line of a user mistake (set by run_launcher, read by train_fold).
ERROR_FILE_VARIABLE = "COMPETITION_ERROR_FILE"
# What a scheduler or an outer torchrun leaves in the environment: a launched process inheriting them
# would take itself for one rank of a bigger job and wait for ranks that never start.
STRAY_RANK_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchFailed(RuntimeError):
    """The `accelerate launch` subprocess crashed (a bug or the machine, not a user mistake)."""


class LaunchRefused(CompetitionError):
    """A launched rank refused a user mistake (bad config, data); the message is the rank's line."""


def accelerate_command(config_path: str | Path, candidate: str, fold: int | None, num_processes: int,
                       accelerate_config: str | Path | None = None, data_dir: str | Path | None = None,
                       python: str = sys.executable, main_process_port: int | None = None) -> list[str]:
    """The `accelerate launch ... -m competition.run.train_fold ...` argv that trains one fold, run
    through `python -m competition.models.launch` (main below), which takes accelerate launch's arguments.

    fold None trains the refit model (all labelled rows). Without an accelerate config file,
    more than one process means plain multi-GPU DDP (--multi_gpu); with one, the file decides
    (FSDP, DeepSpeed, mixed precision) and --num_processes still sets the process count.
    """
    if num_processes < 1:
        raise ConfigError(f"candidate {candidate!r}: num_processes = {num_processes}: give 1 or more "
                          "(usually the number of GPUs on the machine)")
    # --quiet: a failed single process exits 1 without accelerate's own CalledProcessError traceback
    command = [python, "-m", "competition.models.launch", "--quiet"]
    if accelerate_config:
        command += ["--config_file", str(accelerate_config)]
    elif num_processes > 1:
        command += ["--multi_gpu"]
    command += ["--num_processes", str(num_processes), "--num_machines", "1"]
    if main_process_port is not None:
        command += ["--main_process_port", str(main_process_port)]
    command += ["-m", "competition.run.train_fold", "--config", str(config_path), "--candidate", candidate,
                "--fold", "refit" if fold is None else str(fold)]
    if data_dir is not None:
        command += ["--data", str(data_dir)]
    return command


def launcher_of(params) -> str:
    """The candidate's launcher: "none" for kinds without the Launch part (the value was checked
    when the config was loaded)."""
    return params.launcher if isinstance(params, Launch) else "none"


def command_for(config, name: str, fold: int | None, data_dir: str | Path | None = None) -> list[str]:
    """accelerate_command for candidate `name` from its params (paths resolved in the workspace)."""
    params = config.candidate(name).params
    if config.path is None:
        raise ConfigError(f"candidate {name!r}: launcher = \"accelerate\" needs a competition.toml on disk "
                          "(the launched processes read it): save the config to a file")
    accelerate_config = params.accelerate_config or None
    if accelerate_config:
        resolved = config.resolve(accelerate_config)
        if not resolved.exists():
            raise ConfigError(f"candidate {name!r}: accelerate_config = {accelerate_config!r}: {resolved} not found: "
                              "write one with `accelerate config --config_file PATH` or leave it empty for DDP")
        accelerate_config = resolved
    num_processes = params.num_processes
    # Several folds may train on one node at once (--executor ray): each needs its own rendezvous port.
    port = free_port() if num_processes > 1 else None
    return accelerate_command(config.path, name, fold, num_processes, accelerate_config, data_dir=data_dir,
                              main_process_port=port)


def free_port() -> int:
    """A TCP port nobody listens on now (for torch.distributed's rendezvous)."""

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_launcher(command: Sequence[str], cwd: str | Path | None = None) -> None:
    """Run the launch command, streaming its output, without the rank variables a scheduler left.

    LaunchRefused carries a rank's one-line user mistake; LaunchFailed names the command otherwise.
    """

    environment = {name: value for name, value in os.environ.items()
                   if name not in STRAY_RANK_VARIABLES and not name.startswith("TORCHELASTIC_")}
    with tempfile.TemporaryDirectory(prefix="competition-launch-") as folder:
        error_file = Path(folder) / "error.txt"
        environment.update({"PYTHONUNBUFFERED": "1", ERROR_FILE_VARIABLE: str(error_file)})
        completed = subprocess.run(list(command), cwd=cwd, env=environment)
        refusal = reported_refusal(error_file) if completed.returncode != 0 else None
    if refusal:
        raise LaunchRefused(refusal)
    if completed.returncode != 0:
        raise LaunchFailed(f"`{' '.join(command)}` exited with code {completed.returncode}: "
                           "the output of the launched processes above shows why")


def report_refusal(error: Exception) -> bool:
    """In a launched rank: write `error`'s line to the file run_launcher named (atomically, as
    every rank may); False when no launcher named one (the caller prints it then)."""
    target = os.environ.get(ERROR_FILE_VARIABLE)
    if not target:
        return False

    try:
        atomic_write_text(target, str(error))
    except OSError:
        return False
    return True


def reported_refusal(error_file: Path) -> str | None:
    """The line a launched rank reported through report_refusal, or None."""
    try:
        return error_file.read_text(encoding="utf-8").strip() or None
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    """`python -m competition.models.launch ARGS`: `accelerate launch ARGS`, except that when a rank has
    reported a user mistake (report_refusal), the launcher's own failure (torchrun's
    ChildFailedError, accelerate's CalledProcessError) exits quietly: the caller prints the line.
    Other failures keep their traceback, which names the crashed rank and its exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except Exception:
        error_file = os.environ.get(ERROR_FILE_VARIABLE)
        if error_file and reported_refusal(Path(error_file)):
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
