"""`competition data check`."""
from __future__ import annotations

import click

from ..data import describe, load_from_config
from ..tokenizers import get_tokenizer
from .common import json_option, print_json, table, with_config


@click.group("data")
def data_group() -> None:
    """Check the competition files."""


@data_group.command("check")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with train.csv, dev.csv, test.csv, sample_submission.csv (default: [data] dir).")
@click.option("--no-tokens", is_flag=True, help="Skip morpheme counts (faster on the full train set).")
@json_option
@with_config
def check(config, data_dir, no_tokens, as_json) -> None:
    """Validate the data files and print rows, lengths, tags and overlap between splits.

    Example: competition data check --data data/
    """
    data = load_from_config(config, data_dir)
    tokenizer = None if no_tokens else get_tokenizer(config.metric.tokenizer)
    summary = describe(data, tokenizer)
    if as_json:
        print_json(summary)
        return
    click.echo("Data OK: " + ", ".join(f"{name} {rows} rows" for name, rows in summary["rows"].items()))
    rows = []
    for split, stats in summary["lengths"].items():
        for measure, values in stats.items():
            rows.append([split, measure, f"{values['median']:.0f}", f"{values['p95']:.0f}", values["max"]])
    click.echo(table(rows, ["split", "length", "median", "p95", "max"]))
    tags = ", ".join(f"{tag} {count}" for tag, count in summary["tags"].items())
    click.echo(f"Tags: {tags or 'none'}")
    overlap = ", ".join(f"{pair} {count}" for pair, count in summary["overlap"].items())
    click.echo(f"Identical dialogues across splits (leakage check): {overlap or 'n/a'}")


def register(main: click.Group) -> None:
    main.add_command(data_group)
