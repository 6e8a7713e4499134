"""`competition folds build`: split the labelled rows into k folds (folds/folds.csv + folds.json)."""
from __future__ import annotations

import copy

import click

from .common import json_option, print_json, with_config


@click.group("folds")
def folds_group() -> None:
    """K-fold splits that every candidate's out-of-fold predictions use."""


@folds_group.command("build")
@click.option("--k", type=int, default=None, help="Number of folds (default: [cv] k).")
@click.option("--seed", type=int, default=None, help="Shuffling seed (default: [cv] seed).")
@click.option("--strategy", default=None,
              help="length | random | group:COLUMN | stratify:COLUMN (default: [cv] strategy).")
@click.option("--include-dev", is_flag=True, default=None,
              help="Put dev rows into the folds too (then dev is no hold-out); set [cv] include_dev to match.")
@click.option("--force", is_flag=True, help="Replace existing folds that differ (invalidates runs/).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@json_option
@with_config
def build(config, k, seed, strategy, include_dev, force, data_dir, as_json) -> None:
    """Write folds/folds.csv (fname,fold) and folds/folds.json; the same inputs give the same bytes.

    Refuses to replace different existing folds without --force.

    Example: competition folds build --k 5 --seed 42 --strategy group:topic
    """
    from ..data import load_from_config
    from ..folds import build_folds, labelled_rows

    if include_dev:
        config = copy.deepcopy(config)
        config.cv.include_dev = True
    data = load_from_config(config, data_dir)
    info = build_folds(config, labelled_rows(config, data), k=k, seed=seed, strategy=strategy, force=force)
    if as_json:
        print_json(info)
        return
    state = "wrote" if info["changed"] else "unchanged:"
    click.echo(f"{state} {info['path']} ({info['rows']} rows, k={info['k']}, seed {info['seed']}, "
               f"strategy {info['strategy']}{', dev included' if info['include_dev'] else ''})")
    click.echo("rows per fold: " + ", ".join(f"{fold}: {n}" for fold, n in enumerate(info["rows_per_fold"])))


def register(main: click.Group) -> None:
    main.add_command(folds_group)
