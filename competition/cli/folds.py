"""`competition folds build`: split the labelled rows into k folds (folds/folds.csv + folds.json)."""
from __future__ import annotations

import copy

import click

from ..data.folds import build_folds, labelled_rows, load_folds
from ..data.loading import load_from_config
from ..data.shift import workspace_profile
from .common import json_option, nearest_table, print_json, table, with_config


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

    Near-duplicate dialogues (TF-IDF cosine >= [cv] near_duplicates on the metric's tokens) are
    kept in one fold whatever the strategy. With "auto" (the default) it tries the thresholds
    0.5..0.9, prints each one's figures and keeps the one whose CV rows resemble the test most. Then prints how close each CV row is to its training
    folds next to how close the test is to train: similar rows mean the folds look like the test.
    Refuses to replace different existing folds without --force.

    Example: competition folds build --k 5 --seed 42 --strategy group:topic
    """

    if include_dev:
        config = copy.deepcopy(config)
        config.cv.include_dev = True
    data = load_from_config(config, data_dir)
    rows = labelled_rows(config, data)
    info = build_folds(config, rows, k=k, seed=seed, strategy=strategy, force=force, test=data.test)
    dev = data.dev if data.dev is not None and not config.cv.include_dev else None
    info["nearest"] = workspace_profile(config, load_folds(config), rows, dev, data.test).summary()
    if as_json:
        print_json(info)
        return
    state = "wrote" if info["changed"] else "unchanged:"
    click.echo(f"{state} {info['path']} ({info['rows']} rows, k={info['k']}, seed {info['seed']}, "
               f"strategy {info['strategy']}{', dev included' if info['include_dev'] else ''})")
    click.echo("rows per fold: " + ", ".join(f"{fold}: {n}" for fold, n in enumerate(info["rows_per_fold"])))
    grouping = info.get("near_duplicates")
    if grouping and grouping.get("auto"):
        click.echo(calibration_table(grouping))
    if grouping:
        click.echo(f"near-duplicates (cosine >= {grouping['threshold']:g}) kept together: {grouping['clusters']:,} "
                   f"cluster(s) holding {grouping['rows_in_clusters']:,} rows, largest {grouping['largest']}")
    else:
        click.echo("near-duplicates not grouped ([cv] near_duplicates = 0): CV may overstate what the test pays")
    click.echo(nearest_table(info["nearest"]))


def calibration_table(grouping: dict) -> str:
    """The auto grid as `folds build` prints it: per threshold, how the CV rows' similarity to their
    training folds compares with the test's to train, and which one was kept."""
    rows = [[("* " if trial["threshold"] == grouping["threshold"] else "  ") + f"{trial['threshold']:g}",
             f"{100 * trial['unmatched_test_share']:.1f}%", f"{trial['ess']:,.0f}", f"{trial['oof_p95']:.2f}",
             f"{100 * trial['oof_share_at_least_0_5']:.1f}%", f"{trial['clusters']:,}"]
            for trial in grouping["grid"]]
    headers = ["threshold", "test unmatched", "test-matched ESS", "CV p95", "CV >= 0.5", "clusters"]
    return (f'near_duplicates = "auto": {grouping["rule"]}\n' + table(rows, headers)
            + f"\nchosen: {grouping['threshold']:g}")


def register(main: click.Group) -> None:
    main.add_command(folds_group)
