"""`competition cv [NAME...]`: the local leaderboard from stored out-of-fold predictions."""
from __future__ import annotations

import click

from ..data.folds import grouping_threshold
from ..results.curves import fold_curves, plot_curves
from ..results.cv import leaderboard
from ..submit.history import CV_NAMES, describe_calibration, expect_public
from ..workspace.config import Config
from .common import json_option, png_option, print_json, table, with_config


_RANKED = {"test_matched": "test-matched final", "oof": "OOF final"}
_BESIDE = {"test_matched": "OOF final", "oof": "test-matched final"}


def _mean_std(entry: dict, metric: str) -> str:
    return f"{entry['fold_mean'][metric]:.2f}±{entry['fold_std'][metric]:.2f}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return ""
    if not interval or interval[0] is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def _fix(config: Config, name: str, problems: list[str]) -> str:
    """The command that makes `name`'s predictions current again."""
    candidate = name.split("#s")[0]  # a seed's source NAME#sSEED runs with its candidate
    if name in config.ensembles:
        stale_members = any(problem.startswith("member ") for problem in problems)
        return ("competition run, then " if stale_members else "") + f"competition ensemble {name}"
    if name.endswith("@tuned") and name.removesuffix("@tuned") in config.candidates:
        return f"competition tune {name.removesuffix('@tuned')}"
    if name in config.candidates or candidate in config.candidates:
        return f"competition run {name if name in config.candidates else candidate}"
    return "not in competition.toml: add it back or delete its runs/ folder"


def coverage_summary(config: Config, entry: dict) -> str:
    """The coverage column in a few words ("complete", or e.g. "3/5 folds, stale: competition run
    lead"); every reason stays in entry["problems"] (`cv --json`)."""
    if entry["complete"]:
        return "complete"
    counted = {f"{count} {what}" for what, count in entry["coverage"].items() if count}
    parts = [] if entry["folds_done"] == entry["k"] else [f"{entry['folds_done']}/{entry['k']} folds"]
    if entry["folds_done"] == entry["k"] and entry["coverage"]["missing"]:
        parts.append(f"{entry['coverage']['missing']} rows missing")
    parts += [f"{count} {what.replace('_', ' ')}" for what, count in entry["coverage"].items()
              if count and what != "missing"]
    counted.add(f"folds {entry['folds_done']}/{entry['k']}")
    other = [problem for problem in entry["problems"] if problem not in counted]
    if any(problem != "dev output does not cover dev" for problem in other):
        parts.append("stale")
    elif other:
        parts.append("dev output incomplete")
    return ", ".join(parts) + ": " + _fix(config, entry["name"], entry["problems"])


def _footnote(config, board: list[dict], calibration: dict | None = None) -> str:
    """How to read the test-matched and dev novel columns, with the figures they rest on."""
    entry = next((e for e in board if e.get("test_matched")), None)
    lines = [f"Ranked by the {_RANKED[config.cv.pick_by]} ([cv] pick_by), the {_BESIDE[config.cv.pick_by]} beside it. "
             f"Scores are ROUGE F1 x 100; a final is the mean of R1, R2 and RL."]
    if entry is not None:
        matched = entry["test_matched"]
        lines.append(f"test-matched: OOF rows weighted to the test's similarity to train (effective sample "
                     f"{matched['ess']:,.0f} of {entry['rows']:,} rows"
                     + (f"; {100 * matched['unmatched_test_share']:.1f}% of test rows are closer to train than any "
                        f"CV row to its training folds" if matched["unmatched_test_share"] else "") + ").")
    novel = next((e for e in board if e.get("dev_novel_rows") is not None), None)
    if novel is not None:
        lines.append(f"dev novel: the {novel['dev_novel_rows']} dev rows with no train dialogue at cosine >= "
                     f"{grouping_threshold(config, unbuilt=0.0):g}.")
    lines.append(describe_calibration(calibration, CV_NAMES[config.cv.pick_by]).replace("; ! = public outside it", "")
                 + ".")
    if not all(e["complete"] for e in board):
        lines.append("Incomplete sources: `competition cv --json` lists every reason under \"problems\".")
    return "\n".join(lines)


@click.command("cv")
@click.argument("names", nargs=-1)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the competition files (default: [data] dir).")
@click.option("--curves", "curves_of", default=None, metavar="NAME",
              help="Instead of the leaderboard: NAME's training curves per fold (loss, validation loss and ROUGE "
                   "per step, the chosen step) from each fold's train.json.")
@png_option("With --curves: draw the folds' curves into FILE.png.")
@json_option
@with_config(tidies=False)
def cv_command(config, names, data_dir, curves_of, plot_path, as_json) -> None:
    """Rank every source under runs/ (candidates and ensembles) by the CV [cv] pick_by names.

    Per source: folds done, the test-matched final with its 95% bootstrap interval (OOF rows
    weighted so that their similarity to their training folds matches the test's similarity to
    train: the CV to trust when train repeats itself more than the test repeats train) and the
    pooled OOF final with its interval, the ranking one first; once two logged submissions have a
    public score, the expected public score (CV + their median public - CV offset) with its band;
    R1/R2/RL F1 x 100 and final as mean±std over folds, the dev hold-out final on all dev rows and
    on the dev rows with no near-duplicate in train, and the coverage check (incomplete sources are
    listed last, never ranked, with a short reason and the command that fixes it; --json has every
    reason).

    Example: competition cv lead retrieval --json
    (or: competition cv --curves qwen3_qlora --plot curves.png)
    """
    if curves_of is not None or plot_path is not None:
        _curves(config, curves_of, plot_path, as_json)
        return

    board = leaderboard(config, list(names) or None, data_dir=data_dir, progress=True)
    calibration = expect_public(config, board)
    if as_json:
        print_json(board)
        return
    if not board:
        click.echo("no predictions under runs/: run `competition run` first")
        return
    rows = []
    for rank, entry in enumerate(board, start=1):
        matched = entry.get("test_matched") or {}
        finals = {"test_matched": _with_interval(matched.get("final"), matched.get("ci95")),
                  "oof": _with_interval(entry["oof"]["final"], entry["ci95"])}
        expected = entry["expected_public"]
        rows.append([rank if entry["complete"] else "-", entry["name"], entry["kind"],
                     f"{entry['folds_done']}/{entry['k']}",
                     *(finals[key] for key in sorted(finals, key=lambda key: key != config.cv.pick_by)),
                     *([_with_interval(expected["expected"], expected["band"]) if expected else ""] if calibration
                       else []),
                     _mean_std(entry, "rouge1"), _mean_std(entry, "rouge2"), _mean_std(entry, "rougeL"),
                     _mean_std(entry, "final"), _number(entry["dev_final"]), _number(entry.get("dev_novel_final")),
                     coverage_summary(config, entry)])
    headers = {"test_matched": "test-matched [95% CI]", "oof": "OOF final [95% CI]"}
    click.echo(table(rows, ["#", "source", "kind", "folds",
                            *(headers[key] for key in sorted(headers, key=lambda key: key != config.cv.pick_by)),
                            *(["expected public [band]"] if calibration else []),
                            "R1", "R2", "RL", "final (folds)", "dev", "dev novel", "coverage"]))
    click.echo(_footnote(config, board, calibration))


def _curves(config, name: str | None, plot_path, as_json: bool) -> None:
    """--curves NAME [--plot FILE.png]: each fold's steps, chosen step and best validation value."""

    if name is None:
        raise click.UsageError("--plot draws training curves: give the source with --curves NAME")
    curves = fold_curves(config, name)
    if plot_path is not None:
        plot_curves(curves, name, plot_path)
    if as_json:
        print_json(curves)
    else:
        rows = [[label, data.get("global_step"), data.get("chosen_step"), data.get("eval_metric") or "-",
                 _number(data.get("best_metric")),
                 _number(next((p["eval_loss"] for p in reversed(data["curve"]) if "eval_loss" in p), None))]
                for label, data in curves.items()]
        click.echo(table(rows, ["model", "steps", "chosen step", "eval_metric", "best", "last eval loss"]))
    if plot_path is not None:
        click.echo(f"wrote {plot_path}", err=as_json)


def register(main: click.Group) -> None:
    main.add_command(cv_command)
