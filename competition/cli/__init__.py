"""The `competition` command: a thin layer over the library. Each module in COMMANDS adds its
commands through `register(main)` (a new command module is one file plus its name there); `common`
holds what the commands share and `reference` writes docs/reference.md from them.

The top layer: may import anything in the package; nothing in the package imports it.
"""
from __future__ import annotations

import click

from ..errors import CompetitionError
from . import augment, cv, data, ensemble, export, folds, init, run, score, submit, tune

COMMANDS = (augment, cv, data, ensemble, export, folds, init, run, score, submit, tune)


class UserError(click.ClickException):
    """A library CompetitionError shown as one line, exit code 2."""

    exit_code = 2


class CompetitionGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CompetitionError as error:
            raise UserError(str(error)) from None


@click.group(cls=CompetitionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="competition")
def main() -> None:
    """Korean dialogue summarization competition toolkit.

    The flow: data check -> folds build -> run (candidates, out-of-fold + test predictions) ->
    cv (local leaderboard) -> ensemble -> submit -> lb record / history. Settings live in
    competition.toml; every command takes --config to point elsewhere.
    """


for _commands in COMMANDS:
    _commands.register(main)
