"""`competition cv [NAME...]`: the local leaderboard from stored out-of-fold predictions."""
from __future__ import annotations

import click

from .common import json_option, print_json, table, with_config


def _mean_std(entry: dict, metric: str, scale: float) -> str:
    return f"{entry['fold_mean'][metric] * scale:.2f}±{entry['fold_std'][metric] * scale:.2f}"


@click.command("cv")
@click.argument("names", nargs=-1)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@json_option
@with_config
def cv_command(config, names, data_dir, as_json) -> None:
    """Rank every source under runs/ (candidates and ensembles) by out-of-fold ROUGE.

    Per source: folds done, R1/R2/RL F1 x 100 and final as mean±std over folds, the pooled OOF
    final with its 95% bootstrap interval, the dev hold-out final, and the coverage check
    (incomplete sources are listed last with the reason, never ranked).

    Example: competition cv lead retrieval --json
    """
    from ..cv import leaderboard

    board = leaderboard(config, list(names) or None, data_dir=data_dir, progress=True)
    if as_json:
        print_json(board)
        return
    if not board:
        click.echo("no predictions under runs/: run `competition run` first")
        return
    rows = []
    for rank, entry in enumerate(board, start=1):
        ci = entry["ci95"]
        rows.append([rank if entry["complete"] else "-", entry["name"], entry["kind"],
                     f"{entry['folds_done']}/{entry['k']}", _mean_std(entry, "rouge1", 100),
                     _mean_std(entry, "rouge2", 100), _mean_std(entry, "rougeL", 100), _mean_std(entry, "final", 1),
                     f"{entry['oof']['final']:.2f}", f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                     "" if entry["dev_final"] is None else f"{entry['dev_final']:.2f}",
                     "complete" if entry["complete"] else "incomplete: " + "; ".join(entry["problems"])])
    click.echo(table(rows, ["#", "source", "kind", "folds", "R1", "R2", "RL", "final (folds)", "OOF final",
                            "95% CI", "dev final", "coverage"]))


def register(main: click.Group) -> None:
    main.add_command(cv_command)
