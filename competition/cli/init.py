"""`competition init [DIR]`: a fresh workspace."""
from __future__ import annotations

import click

from ..workspace.create import init_workspace
from .common import json_option, print_json


@click.command("init")
@click.argument("folder", default=".", type=click.Path(file_okay=False))
@click.option("--example", is_flag=True, help="Also copy the bundled sample (400/99/200 Korean rows) into data/.")
@click.option("--force", is_flag=True, help="Overwrite an existing competition.toml.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Start from this competition.toml (e.g. a teammate's) instead of the documented defaults.")
@json_option
def init_command(folder, example, force, config_path, as_json) -> None:
    """Write a workspace into FOLDER (default: here): competition.toml with every key documented,
    folds/, submissions/, data/README.md saying where the competition files come from, and a
    .gitignore. --example copies the bundled sample into data/ so everything runs at once.

    Example: competition init my-team --example && cd my-team && competition pipeline
    """

    report = init_workspace(folder, example=example, force=force, template=config_path)
    if as_json:
        print_json(report)
        return
    click.echo(f"workspace ready in {report['folder']}: " + ", ".join(report["written"]))
    click.echo("next: put train.csv, dev.csv, test.csv and sample_submission.csv in data/ "
               + ("(the sample is there now) " if example else "")
               + "then `competition data check` and `competition pipeline`")


def register(main: click.Group) -> None:
    main.add_command(init_command)
