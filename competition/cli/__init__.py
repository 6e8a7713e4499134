"""The `competition` command: a thin layer over the library. Each module here adds one group
of commands through `register(main)`; they are found automatically."""
from __future__ import annotations

import importlib
import pkgutil

import click

from ..errors import CompetitionError


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


for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    if _module == "common":
        continue
    importlib.import_module(f"{__name__}.{_module}").register(main)
