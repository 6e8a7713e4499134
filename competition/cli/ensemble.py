"""`competition ensemble NAME`: build an [ensembles.NAME] from its members' predictions."""
from __future__ import annotations

import click

from ..data.predictions import list_sources
from ..errors import CompetitionError
from ..results.provenance import source_problems, workspace_inputs
from ..run.ensemble import run_ensemble
from .common import json_option, print_json, table, with_config


def _print_report(report: dict) -> None:
    diagnostics = report["diagnostics"]
    rows = [[member, f"{report['member_finals'][member]:.2f}", f"{report['weights'][member]:g}",
             diagnostics["chosen"][member], report["test_chosen"][member]] for member in report["members"]]
    click.echo(f"ensemble {report['name']} ({report['method']}, utility {report['utility']})")
    click.echo(table(rows, ["member", "OOF final", "weight", "OOF rows chosen", "test rows chosen"]))
    low, high = diagnostics["gain_ci95"]
    click.echo(f"OOF final {report['oof_final']:.2f} (nested: chosen without the scored fold); "
               f"optimistic {report['optimistic_final']:.2f}; oracle {diagnostics['oracle_final']:.2f}")
    interval = "" if low is None else f" (95% CI {low:+.2f} .. {high:+.2f})"
    click.echo(f"gain over {diagnostics['best_member']}: {diagnostics['gain']:+.2f}{interval}"
               + (f"; dev final {report['dev_final']:.2f}" if report["dev_final"] is not None else ""))


def _inputs(config) -> tuple[dict, int] | None:
    """The workspace's input hashes and k, or None when its data or folds cannot be read."""
    try:
        return workspace_inputs(config)
    except CompetitionError:
        return None


def _current(config, name: str, inputs: tuple[dict, int] | None) -> bool | None:
    """Whether a built ensemble is current (None when the workspace's data cannot be read)."""
    return None if inputs is None else not source_problems(config, name, *inputs)


def _built(entry: dict) -> str:
    if not entry["built"]:
        return "no"
    return "yes" if entry["current"] is not False else f"stale: `competition ensemble {entry['name']}`"


@click.command("ensemble")
@click.argument("names", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Build every enabled [ensembles.*] section.")
@click.option("--workers", type=int, default=None, help="Processes for pair scoring (default: usable cores).")
@json_option
@with_config
def ensemble(config, names, run_all, workers, as_json) -> None:
    """Build ensembles from members' OOF/test predictions and write runs/NAME/ like a candidate.

    Methods (competition.toml [ensembles.NAME] method): best, mbr, hill-climb. The OOF final is
    nested (each fold chosen on the other folds); the optimistic score is printed beside it.
    With no NAME, lists the configured ensembles.

    Example: competition ensemble mbr_all --json
    """

    if run_all:
        names = tuple(name for name, section in config.ensembles.items() if section.enabled)
    if not names:
        built = set(list_sources(config))
        inputs = _inputs(config) if built & set(config.ensembles) else None
        listing = [{"name": name, "method": section.method, "utility": section.utility,
                    "members": section.members, "enabled": section.enabled, "built": name in built,
                    "current": _current(config, name, inputs) if name in built else False}
                   for name, section in config.ensembles.items()]
        if as_json:
            print_json(listing)
        elif not listing:
            click.echo("no [ensembles.NAME] sections in the config: see the example in competition.toml")
        else:
            click.echo(table([[e["name"], e["method"], e["utility"], ", ".join(e["members"]),
                               "yes" if e["enabled"] else "no", _built(e)] for e in listing],
                             ["ensemble", "method", "utility", "members", "enabled", "built"]))
        return
    reports = [run_ensemble(config, name, workers=workers, progress=True) for name in names]
    for report in reports:
        for warning in report["warnings"]:
            click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(reports[0] if len(reports) == 1 else reports)
        return
    for report in reports:
        _print_report(report)


def register(main: click.Group) -> None:
    main.add_command(ensemble)
