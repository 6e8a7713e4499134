"""`competition run [NAME...]`: out-of-fold, test and dev predictions per candidate and fold."""
from __future__ import annotations

import contextlib
import sys

import click

from ..choices import EXECUTORS
from ..run.executors import ExecutorError
from ..run.ray_cluster import DEFAULT_RAY_TIMEOUT, RayConnection
from ..run.runner import resolve_names, run_candidates
from .common import json_option, print_json, require_workspace, table, with_config


def _parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give fold numbers separated by commas, e.g. 0,2") from None


@click.command("run")
@click.argument("names", nargs=-1)
@click.option("--folds", "folds_text", default=None, help="Only these folds, e.g. 0,2 (default: all).")
@click.option("--force", is_flag=True, help="Re-run folds even when their stored predictions are current.")
@click.option("--refresh", is_flag=True,
              help="Re-run the folds (as --force) asking an endpoint (api kind) again for every row it answered "
                   "before, instead of reading its cache.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@click.option("--require-all", is_flag=True, help="Fail instead of skipping a CUDA-only candidate on a CPU machine.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: folds one after another here; ray: each (candidate, fold) is a Ray task.")
@click.option("--ray-address", default=None,
              help="With --executor ray: join 'auto' (the cluster `ray start` runs on this node) or HOST:PORT "
                   "(default: a private local cluster for this run; RAY_ADDRESS is ignored).")
@click.option("--ray-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"With --ray-address: seconds the cluster has to answer (default {DEFAULT_RAY_TIMEOUT:g}).")
@click.option("--verbose", is_flag=True,
              help="With --executor ray: show Ray's own messages while connecting (default: kept in a log file "
                   "that an error names).")
@json_option
@with_config
def run_command(config, names, folds_text, force, refresh, data_dir, require_all, executor, ray_address, ray_timeout,
                verbose, as_json) -> None:
    """Fit each candidate per fold and write runs/NAME/fold_K/{oof,test,dev}.csv + meta.json.

    Without NAME, every enabled candidate runs. Finished folds whose config, data and folds are
    unchanged are skipped (a killed run resumes); --force re-runs them. With --executor ray every
    pending (candidate, fold) runs at once as a Ray task (the workspace must be on a filesystem
    all nodes share); a failed task is reported and the others finish (exit code 1).

    The first line of a Ray run names the cluster (private, joined) and --json records it per
    candidate under "cluster"; then each candidate's resources per fold are printed before submitting.

    Example: competition run lead retrieval --folds 0,2 --executor ray --ray-address auto
    """

    require_workspace(config)
    folds = _parse_folds(folds_text)
    if executor == "local" and (ray_address or ray_timeout is not None):
        raise ExecutorError(f"{'--ray-address' if ray_address else '--ray-timeout'} only applies with --executor ray")
    if ray_timeout is not None and not ray_address:
        raise ExecutorError("--ray-timeout bounds joining a cluster: add --ray-address auto or HOST:PORT "
                            "(a private local cluster is started, not joined)")
    resolve_names(config, list(names) or None)  # a typo fails before a cluster starts
    with contextlib.ExitStack() as stack:
        cluster = None
        if executor == "ray":
            # Ray's driver prints worker messages on stdout; stdout is for the results (--json).
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            connection = RayConnection(ray_address, ray_timeout or DEFAULT_RAY_TIMEOUT, verbose)
            stack.callback(connection.close)
            cluster = connection.cluster
            click.echo(cluster.describe(), err=True)
        results = run_candidates(config, list(names) or None, folds=folds, force=force, data_dir=data_dir,
                                 require_all=require_all, executor=executor, ray_address=ray_address,
                                 refresh=refresh)
    if cluster is not None:
        for report in results.values():
            report["cluster"] = cluster.as_json()
    failed = {name: report["failed"] for name, report in results.items() if report.get("failed")}
    if as_json:
        print_json(results)
        if failed:
            raise SystemExit(1)
        return
    rows = []
    for name, report in results.items():
        if report.get("not_run"):
            rows.append([name, report["kind"], "", "", "", f"skipped: {report['not_run']}"])
            continue
        rows.append([name, report["kind"], ",".join(map(str, report["ran"])) or "-",
                     ",".join(map(str, report["skipped"])) or "-", f"{report['folds_done']}/{report['k']}",
                     report.get("test_output", "incomplete")])
    click.echo(table(rows, ["candidate", "kind", "ran", "cached", "done", "test output"]))
    for name, errors in failed.items():
        for fold, error in errors.items():
            click.echo(f"FAILED {name} fold {fold}: {error}", err=True)
    if failed:
        click.echo("re-run the same command to run only the missing folds", err=True)
        raise SystemExit(1)


def register(main: click.Group) -> None:
    main.add_command(run_command)
