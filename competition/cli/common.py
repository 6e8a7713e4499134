"""Options and helpers shared by the command modules."""
from __future__ import annotations

import functools
import json
from typing import Any

import unicodedata

import click

from ..config import Config, load_config


def with_config(command):
    """Add --config PATH and pass the loaded Config as `config`."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="competition.toml to use (default: ./competition.toml, or built-in defaults).")
    @functools.wraps(command)
    def wrapper(*args, config_path: str | None = None, **kwargs):
        return command(*args, config=load_config(config_path), **kwargs)

    return wrapper


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
