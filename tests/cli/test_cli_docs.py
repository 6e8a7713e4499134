"""Every CLI command has help text with an example and is documented in README.md."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from competition.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def walk(group: click.Group, prefix: tuple[str, ...] = ()):
    """(path, command) for every visible command and group under `group`."""
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        path = prefix + (name,)
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


COMMANDS = list(walk(main))
LEAVES = [(path, command) for path, command in COMMANDS if not isinstance(command, click.Group)]


def ids(items):
    return [" ".join(path) for path, _ in items]


def test_the_walk_finds_the_foundation_commands():
    names = ids(COMMANDS)
    assert {"data", "data check", "score"} <= set(names)


@pytest.mark.parametrize("path, command", COMMANDS, ids=ids(COMMANDS))
def test_command_has_help(path, command):
    assert (command.help or "").strip(), f"competition {' '.join(path)} has no help text"
    assert command.get_short_help_str().strip()


@pytest.mark.parametrize("path, command", LEAVES, ids=ids(LEAVES))
def test_command_help_has_an_example(path, command):
    invocation = "competition " + " ".join(path)
    assert invocation in command.help, f"the help of {invocation} has no example using it"


@pytest.mark.parametrize("path, command", LEAVES, ids=ids(LEAVES))
def test_command_is_in_readme(path, command):
    invocation = "competition " + " ".join(path)
    # As a word sequence: `competition data` must not pass for `competition data check`'s sake.
    assert re.search(re.escape(invocation) + r"(?![\w-])", README), f"README.md does not mention `{invocation}`"


def test_help_runs_for_every_command(cli):
    for path, _ in COMMANDS:
        result = cli([*path, "--help"])
        assert result.exit_code == 0, f"competition {' '.join(path)} --help failed: {result.output}"
        assert "Usage: " in result.output


def config_option(command: click.Command) -> click.Option | None:
    return next((param for param in command.params
                 if isinstance(param, click.Option) and "--config" in param.opts), None)


def dummy_arguments(command: click.Command, folder: Path) -> list[str]:
    """Values click accepts for every required parameter (a choice's first value, an existing file
    for a path that must exist), so a command gets as far as loading its config."""
    dummy = folder / "dummy.csv"
    dummy.write_text("fname,summary\n", encoding="utf-8")
    values = []
    for param in command.params:
        if not param.required:
            continue
        if isinstance(param.type, click.Choice):
            value = str(param.type.choices[0])
        elif isinstance(param.type, click.Path):
            value = str(dummy)
        else:
            value = "dummy"
        values += [param.opts[0], value] if isinstance(param, click.Option) else [value] * max(param.nargs, 1)
    return values


@pytest.mark.parametrize("path, command", LEAVES, ids=ids(LEAVES))
def test_command_accepts_config(path, command, cli, tmp_path):
    """Every command takes --config PATH (README: "every command takes `--config PATH`") and loads it
    before anything else: a missing file is refused, whatever the (dummy) arguments say."""
    option = config_option(command)
    assert option is not None, f"competition {' '.join(path)} has no --config option (use @with_config)"
    assert option.name == "config_path" and not option.required and not option.is_flag
    result = cli([*path, *dummy_arguments(command, tmp_path), "--config", tmp_path / "absent.toml"], cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert "absent.toml not found" in result.output and "Traceback" not in result.output
