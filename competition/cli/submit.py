"""`competition submit`, `lb record`, `history`, `diff` and `pipeline` (what `make submit` runs)."""
from __future__ import annotations

import click

from ..choices import HISTORY_SORT_KEYS
from ..history import GAPS, history_report, plot_history
from ..pipeline import run_pipeline, with_data_dir
from ..submission import diff_submissions, record_scores, submit
from .common import json_option, png_option, print_json, require_workspace, table, with_config


def _score(value) -> str:
    """A score (0-100, like every ROUGE the tool shows) with two decimals, "" when unknown."""
    if value is None or value == "":
        return ""
    return f"{float(value):.4f}"


def _gap(value) -> str:
    return "" if value is None else f"{value:+.4f}"


def _log_row_lines(row: dict) -> str:
    """A logged submission as `key  value` lines (only the filled fields)."""
    shown = [[key, value] for key, value in row.items() if value not in ("", None)]
    return table(shown, ["field", "value"])


def leaderboard_table(board: list[dict]) -> str:
    rows = []
    for entry in board:
        oof = entry.get("oof") or {}
        ci = entry.get("ci95") or [None, None]
        rows.append([entry["name"], entry.get("kind", ""), f"{entry.get('folds_done', '')}/{entry.get('k', '')}",
                     _score(oof.get("rouge1")), _score(oof.get("rouge2")), _score(oof.get("rougeL")),
                     _score(oof.get("final")),
                     f"{ci[0]:.2f}-{ci[1]:.2f}" if ci[0] is not None and ci[1] is not None else "",
                     _score((entry.get("test_matched") or {}).get("final")), _score(entry.get("dev_final"))])
    return table(rows, ["source", "kind", "folds", "R1", "R2", "RL", "OOF final", "95% CI", "test-matched",
                        "dev final"])


@click.command("submit")
@click.argument("source")
@click.option("--note", default="", help="Free text stored in the log (what changed, why).")
@click.option("--allow-duplicate", is_flag=True, help="Log the file even if an identical one is already logged.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@json_option
@with_config
def submit_command(config, source, note, allow_duplicate, data_dir, as_json) -> None:
    """Write submissions/NNNN-SOURCE.csv from SOURCE's test predictions and add a row to
    submissions/log.csv (sha256, config hash, git commit, OOF and dev scores).

    Example: competition submit lead --note "lead-3 baseline"
    """

    require_workspace(config)
    row = submit(with_data_dir(config, data_dir), source, note=note, allow_duplicate=allow_duplicate)
    if as_json:
        print_json(row)
        return
    click.echo(f"Wrote {config.submit.dir}/{row['file']} (submission {row['id']}); upload it, then "
               f"`competition lb record {row['id']} --public SCORE`")
    click.echo(_log_row_lines(row))


@click.group("lb")
def lb_group() -> None:
    """Leaderboard scores typed in from the competition site."""


@lb_group.command("record")
@click.argument("submission_id")
@click.option("--public", type=float, default=None, help="Public leaderboard final (0-100).")
@click.option("--private", type=float, default=None, help="Private leaderboard final (0-100), once revealed.")
@json_option
@with_config
def lb_record(config, submission_id, public, private, as_json) -> None:
    """Record a submission's leaderboard scores; a second recording corrects the first and both
    stay in submissions/lb_history.csv.

    Example: competition lb record 3 --public 42.8153
    """

    row = record_scores(config, submission_id, public=public, private=private)
    if as_json:
        print_json(row)
        return
    click.echo(f"Recorded submission {row['id']} ({row['file']}): public {row['public'] or '-'}, "
               f"private {row['private'] or '-'}, CV {row['oof_final'] or '-'}")


def _correlation_line(name: str, result: dict) -> str:
    if result["pearson"] is None:
        return f"CV vs {name}: n={result['n']} (need 3 or more points with both scores)"
    spearman = "n/a" if result["spearman"] is None else f"{result['spearman']:.3f}"
    return f"CV vs {name}: Pearson {result['pearson']:.3f}, Spearman {spearman}, n={result['n']}"


@click.command("history")
@click.option("--sort", "sort_key", type=click.Choice(HISTORY_SORT_KEYS), default="id",
              help="Order: id (oldest first) or best first by cv, public or private.")
@png_option("Also write a PNG: CV vs leaderboard scatter and scores over time.")
@click.option("--cv-tolerance", type=float, default=1.0, show_default=True,
              help="How far below the best CV a pick may be when the log has no 95%% interval.")
@json_option
@with_config
def history_command(config, sort_key, plot_path, cv_tolerance, as_json) -> None:
    """All submissions with CV (OOF final), test-matched CV, dev, public and private scores and
    their gaps; CV-vs-leaderboard correlations; warnings about public gains CV does not back; the two
    final picks, by the score [cv] pick_by names (default: test-matched).

    Example: competition history --sort public --plot history.png
    """

    report = history_report(config, sort_key, cv_tolerance)
    if plot_path:
        report["plot"] = str(plot_history(report["submissions"], plot_path))
    if as_json:
        print_json(report)
        return
    if not report["submissions"]:
        click.echo("No submissions yet: run `competition submit SOURCE` (or `make submit`).")
        return
    short = {"cv": "CV", "dev": "dev", "public": "pub", "private": "priv"}
    rows = [[row["id"], row["source"], _score(row["cv"]), _score(row["matched"]), _score(row["dev"]), _score(row["public"]),
             _score(row["private"]), *(_gap(row[gap]) for gap, _, _ in GAPS),
             row["created_at"][:16], row["note"][:40]] for row in report["submissions"]]
    gap_headers = [f"{short[high]}-{short[low]}" for _, high, low in GAPS]
    click.echo(table(rows, ["id", "source", "CV", "matched", "dev", "public", "private", *gap_headers, "created",
                            "note"]))
    click.echo("")
    click.echo(_correlation_line("public", report["correlation"]["public"]))
    click.echo(_correlation_line("private", report["correlation"]["private"]))
    for warning in report["warnings"]:
        click.echo(f"WARNING: {warning}")
    click.echo("")
    click.echo(report["picks"]["advice"])
    if plot_path:
        click.echo(f"Plot written to {report['plot']}")


@click.command("diff")
@click.argument("first")
@click.argument("second")
@click.option("--examples", default=3, show_default=True, help="How many differing rows to show.")
@json_option
@with_config
def diff_command(config, first, second, examples, as_json) -> None:
    """Compare two submissions (log ids, file names or paths): rows that differ, mean ROUGE of A
    against B, and the most different rows side by side.

    Example: competition diff 3 5
    """

    report = diff_submissions(config, first, second, examples)
    if as_json:
        print_json(report)
        return
    click.echo(f"A = {report['a']}\nB = {report['b']}")
    click.echo(f"{report['differing']} of {report['rows']} rows differ; ROUGE of A against B: "
               f"R1 {report['rouge1']:.2f}, R2 {report['rouge2']:.2f}, RL {report['rougeL']:.2f}, "
               f"final {report['final']:.2f}")
    for example in report["examples"]:
        click.echo(f"\n{example['fname']} (final {example['final']:.2f})\n  A: {example['a']}\n  B: {example['b']}")


@click.command("pipeline")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@click.option("--require-all", is_flag=True, help="Fail instead of skipping candidates that need CUDA.")
@click.option("--note", default="make submit", show_default=True, help="Note for the log row.")
@json_option
@with_config
def pipeline_command(config, data_dir, require_all, note, as_json) -> None:
    """The whole job (`make submit`): data check, folds when absent, run enabled candidates and
    ensembles, cv, submit the best-CV source (or [submit] source); prints the CV leaderboard and
    the log row.

    Example: competition pipeline --data data/
    """

    result = run_pipeline(config, data_dir, require_all, note,
                          echo=lambda line: click.echo(line, err=as_json))
    if as_json:
        print_json({key: value for key, value in result.items() if key != "runs"})
        return
    click.echo("\nCV leaderboard")
    click.echo(leaderboard_table(result["leaderboard"]))
    click.echo("\nSubmission" + ("" if result["new"] else " (already logged)"))
    click.echo(_log_row_lines(result["submission"]))


def register(main: click.Group) -> None:
    for command in (submit_command, lb_group, history_command, diff_command, pipeline_command):
        main.add_command(command)
