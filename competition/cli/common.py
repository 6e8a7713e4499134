"""Options and helpers shared by the command modules."""
from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path
from typing import Any

import click

from ..data.predictions import RUNS_DIR
from ..errors import ConfigError
from ..submit.submission import tidy_workspace
from ..text.token_cache import workspace
from ..workspace.config import Config, load_config


def with_config(command=None, *, tidies: bool = True):
    """Add --config PATH and pass the loaded Config as `config`. A command that writes results or
    submissions first tidies what a killed command left (submission.tidy_workspace); one that only
    reads and scores them (`with_config(tidies=False)`) leaves the workspace as it found it."""
    if command is None:
        return functools.partial(with_config, tidies=tidies)

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="competition.toml to use (default: ./competition.toml, or built-in defaults).")
    @functools.wraps(command)
    def wrapper(*args, config_path: str | None = None, **kwargs):
        config = load_config(config_path)
        if tidies:
            tidy_workspace(config)
        with token_cache(config):
            return command(*args, config=config, **kwargs)

    return wrapper


def require_workspace(config: Config) -> None:
    """Commands that write results need a workspace: without a competition.toml here the built-in
    defaults name no candidate, and the folders would land wherever the command was typed."""
    if config.path is None:
        raise ConfigError(f"no competition.toml in {Path.cwd()}: make a workspace with `competition init DIR "
                          f"--example` (or `competition init` here) and run the command in it, or pass --config PATH")


def token_cache(config: Config):
    """Every tokenising command (and the processes it starts) shares the workspace's token cache,
    runs/.cache/tokens.sqlite, bounded by [metric] cache_mb (0 = off). A folder with neither
    competition.toml nor runs/ is no workspace: nothing is written there."""

    runs = config.resolve(RUNS_DIR)
    return workspace(runs if config.path is not None or runs.is_dir() else None, config.metric.cache_mb)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def display_width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value + " " * (width - display_width(value)) for value, width in zip(row, widths)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def png_option(help_text: str):
    """--plot FILE.png: refused (exit 2, one line) unless it ends in .png and its folder exists."""

    def check(context, parameter, value):
        if value is None:
            return None

        path = Path(value)
        if path.suffix.lower() != ".png":
            raise ConfigError(f"--plot {value}: the name does not end in .png, and the plot is a PNG image: "
                              f"use e.g. {path.with_suffix('.png').name}")
        if not path.parent.resolve().is_dir():
            raise ConfigError(f"--plot {value}: folder {str(path.parent)!r} does not exist: create it or choose "
                              f"another path")
        return path

    return click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, callback=check,
                        help=help_text)


# How each nearest-neighbour set is named in tables (shift.py's keys).
NEAREST_LABELS = {"train_to_train": "train -> other train rows", "oof_to_training_folds": "CV row -> its training folds",
                  "dev_to_train": "dev -> train", "test_to_train": "test -> train"}


def nearest_table(summaries: dict[str, dict]) -> str:
    """Quantiles and shares of nearest-neighbour cosines, one row per set, side by side."""
    summaries = {name: summary for name, summary in summaries.items() if summary["rows"]}
    if not summaries:
        return "(no rows)"
    rows = []
    for name, summary in summaries.items():
        quantiles, shares = summary["quantiles"], summary["share_at_least"]
        rows.append([NEAREST_LABELS.get(name, name), summary["rows"], *(f"{v:.2f}" for v in quantiles.values()),
                     *(f"{100 * v:.1f}%" for v in shares.values())])
    first = next(iter(summaries.values()))
    headers = ["nearest-neighbour cosine", "rows", *first["quantiles"], *(f">= {level}" for level in first["share_at_least"])]
    return table(rows, headers)
