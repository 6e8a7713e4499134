"""`python -m competition.run.train_fold --config competition.toml --candidate NAME --fold K`: train one
fold's model in this process (the entry point `accelerate launch` starts once per GPU).

It fits exactly what `competition run` would fit for that fold (same rows, same workdir), so the
runner afterwards finds the finished training and only predicts. `--fold refit` trains on all rows.
A user mistake exits with code 2 and its one line: printed, or written to the file the runner
named in COMPETITION_ERROR_FILE (see competition.models.launch).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..data.predictions import fold_dir, run_dir
from ..errors import CompetitionError
from ..models.launch import report_refusal
from ..workspace.config import load_config
from .fold_run import make_candidate, prepare, training_rows


def train_fold(config_path: str | Path, name: str, fold: int | None, data_dir: str | Path | None = None) -> None:
    """Fit candidate `name` on the training rows of `fold` (None: every labelled row) into its workdir."""

    config = load_config(config_path)
    context = prepare(config, data_dir)
    if fold is None:
        mask, workdir = np.ones(len(context.rows), dtype=bool), run_dir(config, name) / "refit" / "work"
    else:
        mask, workdir = context.fold_of != fold, fold_dir(config, name, fold) / "work"
    instance = make_candidate(context, name, workdir)
    instance.fit(training_rows(context, name, mask), fold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m competition.run.train_fold", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path of competition.toml")
    parser.add_argument("--candidate", required=True, help="candidate name in [candidates.NAME]")
    parser.add_argument("--fold", required=True, help="fold number, or 'refit' for the model on all rows")
    parser.add_argument("--data", default=None, help="folder with the competition files (default: [data] dir)")
    args = parser.parse_args(argv)

    try:
        train_fold(args.config, args.candidate, None if args.fold == "refit" else int(args.fold), args.data)
    except CompetitionError as error:  # a user mistake: one line, as the CLI prints it
        if not report_refusal(error):  # run_launcher prints it once, not once per rank
            print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
