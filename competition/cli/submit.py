"""`competition submit`, `lb record`, `history`, `diff` and `pipeline` (what `make submit` runs)."""
from __future__ import annotations

import click

from ..choices import HISTORY_SORT_KEYS
from ..errors import LeaderboardError
from ..submit.history import GAPS, describe_calibration, history_report, other_score, plot_history
from ..submit.leaderboard import SYNC_REFUSAL_FIX, open_platform, sync, upload, wait_for_score
from ..submit.pipeline import run_pipeline, with_data_dir
from ..submit.submission import SCORE_RULE, diff_submissions, record_scores, submit
from .common import json_option, png_option, print_json, require_workspace, table, with_config


def _score(value) -> str:
    """A score (0-100, like every ROUGE the tool shows) with two decimals, as the cv table prints
    it; "" when unknown."""
    if value is None or value == "":
        return ""
    return f"{float(value):.2f}"


def _gap(value) -> str:
    return "" if value is None else f"{value:+.4f}"


def _log_row_lines(row: dict) -> str:
    """A logged submission as `key  value` lines (only the filled fields)."""
    shown = [[key, value] for key, value in row.items() if value not in ("", None)]
    return table(shown, ["field", "value"])


def leaderboard_table(board: list[dict], pick_by: str = "test_matched") -> str:
    """The pipeline's CV leaderboard: the ranking final ([cv] pick_by) first with its 95% interval,
    the other final beside it."""
    names = {"test_matched": "test-matched", "oof": "OOF final"}
    order = sorted(names, key=lambda key: key != pick_by)
    rows = []
    for entry in board:
        oof = entry.get("oof") or {}
        matched = entry.get("test_matched") or {}
        finals = {"test_matched": (matched.get("final"), matched.get("ci95")),
                  "oof": (oof.get("final"), entry.get("ci95"))}
        ci = finals[pick_by][1] or [None, None]
        rows.append([entry["name"], entry.get("kind", ""), f"{entry.get('folds_done', '')}/{entry.get('k', '')}",
                     *(_score(finals[key][0]) for key in order),
                     f"{ci[0]:.2f}-{ci[1]:.2f}" if ci[0] is not None and ci[1] is not None else "",
                     _score(oof.get("rouge1")), _score(oof.get("rouge2")), _score(oof.get("rougeL")),
                     _score(entry.get("dev_final")), "complete" if entry.get("complete") else "incomplete"])
    return table(rows, ["source", "kind", "folds", f"{names[order[0]]} (ranks)", names[order[1]], "95% CI",
                        "R1", "R2", "RL", "dev final", "coverage"])


@click.command("submit")
@click.argument("source")
@click.option("--note", default="", help="Free text stored in the log (what changed, why).")
@click.option("--allow-duplicate", is_flag=True, help="Log the file even if an identical one is already logged.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@click.option("--upload", "upload_it", is_flag=True,
              help='Also upload it to the platform ([leaderboard] backend = "kaggle") and log its reference.')
@click.option("--wait", is_flag=True, help="With --upload: poll until the platform scores it and log the public "
                                           "score ([leaderboard] wait_s at most).")
@json_option
@with_config
def submit_command(config, source, note, allow_duplicate, data_dir, upload_it, wait, as_json) -> None:
    """Write submissions/NNNN-SOURCE.csv from SOURCE's test predictions and add a row to
    submissions/log.csv (sha256, config hash, git commit, OOF and dev scores). With --upload (Kaggle
    backend) the file is uploaded with the description `#ID SOURCE cv=CV` and its reference logged.

    Example: competition submit lead --note "lead-3 baseline" --upload --wait
    """

    require_workspace(config)
    if wait and not upload_it:
        raise LeaderboardError("--wait polls for the score of an upload: add --upload")
    platform = open_platform(config) if upload_it else None  # before the file is written: fail early
    row = submit(with_data_dir(config, data_dir), source, note=note, allow_duplicate=allow_duplicate)
    if platform is not None:
        row = _upload_and_wait(config, row["id"], platform, wait, force=False, echo=not as_json,
                               logged=f"submission {row['id']} ({row['file']}) is logged but not uploaded")["row"]
    if as_json:
        print_json(row)
        return
    if platform is None:
        then = (f"`competition lb upload {row['id']} --wait`" if config.leaderboard.backend == "kaggle" else
                f"upload it, then `competition lb record {row['id']} --public SCORE`")
        click.echo(f"Wrote {config.submit.dir}/{row['file']} (submission {row['id']}); {then}")
    click.echo(_log_row_lines(row))


def _upload_and_wait(config, submission_id: str, platform, wait: bool, force: bool, echo: bool,
                     logged: str = "") -> dict:
    """Upload a logged submission, and with `wait` poll for its score; prints progress when `echo`.
    Returns {"row": the log row, "status": ..., "sync": ...} (status "uploaded" without wait).
    `logged` leads the message of a failed upload (what is already done)."""
    try:
        row = upload(config, submission_id, platform, force=force)
    except LeaderboardError as error:
        if logged:
            raise LeaderboardError(f"{logged}: {error}") from None
        raise
    say = click.echo if echo else (lambda line: None)
    say(f"Uploaded {row['file']} as submission {row['id']} (reference {row['lb_ref']}) to "
        f"{config.leaderboard.competition}")
    if not wait:
        say("`competition lb sync` records its score once the platform has it")
        return {"row": row, "status": "uploaded", "sync": None}
    try:
        result = wait_for_score(config, row["id"], platform)
    except KeyboardInterrupt:
        click.echo(f"Stopped waiting: submission {row['id']} is uploaded and logged (reference {row['lb_ref']}); "
                   f"`competition lb sync` records its score later", err=True)
        raise SystemExit(130) from None
    if result["status"] == "error":
        raise LeaderboardError(f"the platform could not score submission {row['id']} (reference {row['lb_ref']}): "
                               f"{result['error'] or 'no reason given'}: fix the file and submit again")
    if result["status"] == "pending":
        say(f"Still pending after {result['waited_s']:g} s: `competition lb sync` records its score later")
    else:
        for line in _sync_lines(result["sync"]):
            say(line)
    return result


@click.group("lb")
def lb_group() -> None:
    """Leaderboard scores: typed in from the competition site (record), or uploaded and fetched
    through the platform's API (upload, sync; [leaderboard] backend = "kaggle")."""


@lb_group.command("record")
@click.argument("submission_id")
@click.option("--public", type=float, default=None, help="Public leaderboard final (0-100).")
@click.option("--private", type=float, default=None, help="Private leaderboard final (0-100), once revealed.")
@click.option("--force", is_flag=True, help=f"Record it even when implausible: {SCORE_RULE}.")
@json_option
@with_config
def lb_record(config, submission_id, public, private, force, as_json) -> None:
    """Record a submission's leaderboard scores; a second recording corrects the first and both
    stay in submissions/lb_history.csv. A score on the 0-1 scale (below 1 while CVs are 1 or more)
    or more than 25 points from the submission's CV is refused unless --force.

    Example: competition lb record 3 --public 42.8153
    """

    row = record_scores(config, submission_id, public=public, private=private, force=force)
    if as_json:
        print_json(row)
        return
    click.echo(f"Recorded submission {row['id']} ({row['file']}): public {row['public'] or '-'}, "
               f"private {row['private'] or '-'}, CV {row['oof_final'] or '-'}")


@lb_group.command("upload")
@click.argument("submission_id")
@click.option("--wait", is_flag=True, help="Poll until the platform scores it and log the public score "
                                           "([leaderboard] wait_s at most).")
@click.option("--force", is_flag=True, help="Upload it again although the log holds a reference for it.")
@json_option
@with_config
def lb_upload(config, submission_id, wait, force, as_json) -> None:
    """Upload a logged submission to the platform ([leaderboard] backend = "kaggle") with the
    description `#ID SOURCE cv=CV`, and log its reference and upload time.

    Example: competition lb upload 7 --wait
    """

    result = _upload_and_wait(config, submission_id, open_platform(config), wait, force, echo=not as_json)
    if as_json:
        print_json(result)


def _sync_lines(report: dict) -> list[str]:
    """What a sync changed, kept, refused, and what is pending, failed or unmatched: one line each."""
    lines = []
    for entry in report["linked"]:
        lines.append(f"linked    {entry['id']}  reference {entry['ref']} (matched by {entry['by']})")
    for entry in report["recorded"]:
        lines.append(f"recorded  {entry['id']}  {entry['column']} {entry['platform']} (was {entry['log'] or '-'})")
    for entry in report["kept"]:
        lines.append(f"kept      {entry['id']}  {entry['column']} {entry['log']} typed by hand; the platform says "
                     f"{entry['platform']}: pass --force to take it")
    for entry in report["refused"]:
        lines.append(f"refused   {entry['id']}  {entry['problem']}; {SYNC_REFUSAL_FIX}")
    for entry in report["pending"]:
        lines.append(f"pending   {entry['id']}  reference {entry['ref']}: not scored yet")
    for entry in report["failed"]:
        lines.append(f"failed    {entry['id']}  reference {entry['ref']}: {entry['error']}")
    for entry in report["unmatched"]:
        lines.append(f"unmatched reference {entry['ref']} {entry['description']!r} ({entry['submitted_at']}, "
                     f"{entry['status']}): {entry['reason']}")
    return lines


@lb_group.command("sync")
@click.option("--force", is_flag=True, help="Replace scores typed by hand with the platform's, and record "
                                            "implausible ones too.")
@json_option
@with_config
def lb_sync(config, force, as_json) -> None:
    """Fetch the team's submissions from the platform ([leaderboard] backend = "kaggle") and fill
    public and private scores into the log. Each is matched to a log row by its reference, else by
    `#ID SOURCE` in its description, else by sha256. Scores typed by hand are kept unless --force;
    pending, failed and unmatched submissions are listed.

    Example: competition lb sync
    """

    report = sync(config, open_platform(config), force=force)
    if as_json:
        print_json(report)
        return
    counts = {key: len(report[key]) for key in ("recorded", "linked", "kept", "refused", "pending", "failed",
                                                  "unmatched")}
    click.echo(f"{report['listed']} submission(s) on {config.leaderboard.competition}: "
               + ", ".join(f"{count} {key}" for key, count in counts.items()))
    for line in _sync_lines(report):
        click.echo(line)
    if not counts["recorded"] and not counts["linked"]:
        click.echo("The log is up to date.")


def _correlation_line(name: str, result: dict, label: str = "CV") -> str:
    if result["pearson"] is None:
        return f"{label} vs {name}: n={result['n']} (need 3 or more points with both scores)"
    spearman = "n/a" if result["spearman"] is None else f"{result['spearman']:.3f}"
    return f"{label} vs {name}: Pearson {result['pearson']:.3f}, Spearman {spearman}, n={result['n']}"


@click.command("history")
@click.option("--sort", "sort_key", type=click.Choice(HISTORY_SORT_KEYS), default="id",
              help="Order: id (oldest first) or best first by cv, public or private.")
@png_option("Also write a PNG: CV vs leaderboard scatter and scores over time.")
@click.option("--cv-tolerance", type=float, default=1.0, show_default=True,
              help="How far below the best CV a pick may be when the log has no 95%% interval.")
@json_option
@with_config
def history_command(config, sort_key, plot_path, cv_tolerance, as_json) -> None:
    """All submissions with CV, dev, public and private scores and their gaps; CV-vs-leaderboard
    correlations; warnings about public gains CV does not back; the two final picks. CV is the
    score [cv] pick_by names (default: the test-matched final; the other final beside it). From two
    public scores on, each submission's expected public score (CV + the median public - CV offset)
    with its band, and a warning for a public score outside it.

    Example: competition history --sort public --plot history.png
    """

    report = history_report(config, sort_key, cv_tolerance)
    if plot_path:
        report["plot"] = str(plot_history(report["submissions"], plot_path, report["calibration"]))
    if as_json:
        print_json(report)
        return
    if not report["submissions"]:
        click.echo("No submissions yet: run `competition submit SOURCE` (or `make submit`).")
        return
    label = report["cv_label"]
    other = "matched" if config.cv.pick_by == "oof" else "OOF"
    short = {"cv": "CV", "dev": "dev", "public": "pub", "private": "priv"}
    rows = []
    for row in report["submissions"]:
        expected = row["expected_public"] or {}
        band = expected.get("band")
        rows.append([row["id"], row["source"], _score(row["cv"]) + ("*" if row["cv_by"] != config.cv.pick_by else ""),
                     _score(other_score(row)[1]), _score(row["dev"]),
                     _score(row["public"]) + ("!" if row["lb_outlier"] else ""), _score(expected.get("expected")),
                     f"{band[0]:.2f}-{band[1]:.2f}" if band else "", _score(row["private"]),
                     *(_gap(row[gap]) for gap, _, _ in GAPS), row["created_at"][:16], row["note"][:40]])
    gap_headers = [f"{short[high]}-{short[low]}" for _, high, low in GAPS]
    click.echo(f"CV column: {label} ([cv] pick_by = {config.cv.pick_by!r})"
               + ("; * = OOF final, logged before test-matched finals" if any(
                   row["cv_by"] != config.cv.pick_by for row in report["submissions"]) else "")
               + f"; {other} column: the {'test-matched' if other == 'matched' else 'OOF'} final beside it")
    click.echo(table(rows, ["id", "source", "CV", other, "dev", "public", "expected", "band", "private",
                            *gap_headers, "created", "note"]))
    click.echo("")
    click.echo(_correlation_line("public", report["correlation"]["public"], label))
    click.echo(_correlation_line("private", report["correlation"]["private"], label))
    click.echo(describe_calibration(report["calibration"], label))
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
    click.echo(leaderboard_table(result["leaderboard"], config.cv.pick_by))
    click.echo("\nSubmission" + ("" if result["new"] else " (already logged)"))
    click.echo(_log_row_lines(result["submission"]))


def register(main: click.Group) -> None:
    for command in (submit_command, lb_group, history_command, diff_command, pipeline_command):
        main.add_command(command)
