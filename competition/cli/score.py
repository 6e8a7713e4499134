"""`competition score PRED.csv --refs REFS.csv`."""
from __future__ import annotations

import click

from ..choices import CONVENTIONS, MULTI_REF_RULES
from ..scoring import score_files
from .common import json_option, print_json, table, with_config


@click.command("score")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("--refs", "references", required=True, type=click.Path(dir_okay=False),
              help="CSV or JSONL with fname and summary (or summary1..N) columns.")
@click.option("--tokenizer", default=None, help="kiwi, whitespace or english (default: [metric] tokenizer).")
@click.option("--convention", type=click.Choice(CONVENTIONS), default=None,
              help="official = rouge 1.0.1 as the organisers run it; rouge-score = Google's semantics.")
@click.option("--multi-ref", type=click.Choice(MULTI_REF_RULES), default=None,
              help="How several references per row combine (default: [metric] multi_ref, mean).")
@click.option("--by", "by_column", default=None, help="Break the score down by a reference column, e.g. topic.")
@click.option("--strict", is_flag=True, help="Refuse empty (or NaN) predictions instead of scoring them as 0.")
@json_option
@with_config
def score(config, predictions, references, tokenizer, convention, multi_ref, by_column, strict, as_json) -> None:
    """Score a predictions CSV (fname,summary) against references: ROUGE-1/2/L F1 and final, all
    x 100 (0-100, the leaderboard's scale; --json too).

    Empty predictions score 0 and are counted in a warning on stderr (--strict refuses them).

    Example: competition score runs/lead/fold_0/oof.csv --refs data/train.csv --by topic
    """
    metric = config.metric
    report = score_files(predictions, references, tokenizer or metric.tokenizer,
                         convention or metric.convention, multi_ref or metric.multi_ref, by_column, strict)
    if report["empty_predictions"]:
        click.echo(f"warning: {report['empty_predictions']} of {report['rows']} predictions in {predictions} are "
                   f"empty and score 0 (--strict refuses them)", err=True)
    if as_json:
        print_json(report)
        return
    rows = [["all", report["rows"], f"{report['rouge1']['f1']:.2f}", f"{report['rouge2']['f1']:.2f}",
             f"{report['rougeL']['f1']:.2f}", f"{report['final']:.2f}"]]
    for group, part in report.get("by", {}).items():
        rows.append([group, part["rows"], f"{part['rouge1']['f1']:.2f}", f"{part['rouge2']['f1']:.2f}",
                     f"{part['rougeL']['f1']:.2f}", f"{part['final']:.2f}"])
    click.echo(table(rows, [by_column or "rows", "n", "R1 F1", "R2 F1", "RL F1", "final"]))


def register(main: click.Group) -> None:
    main.add_command(score)
