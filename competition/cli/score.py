"""`competition score PRED.csv --refs REFS.csv` and `competition score NAME` (a source's whole OOF)."""
from __future__ import annotations

from pathlib import Path

import click

from ..choices import CONVENTIONS, MULTI_REF_RULES
from ..data.predictions import list_sources
from ..errors import ConfigError
from ..results.scoring import score_files, score_source
from .common import json_option, print_json, table, with_config


@click.command("score")
@click.argument("predictions")
@click.option("--refs", "references", default=None, type=click.Path(dir_okay=False),
              help="CSV or JSONL with fname and summary (or summary1..N) columns (default for a source NAME: the "
                   "workspace's labelled rows).")
@click.option("--subset", is_flag=True,
              help="Score only the reference rows the predictions cover (e.g. one fold's OOF against train); "
                   "says how many were left out.")
@click.option("--tokenizer", default=None, help="kiwi, whitespace or english (default: [metric] tokenizer).")
@click.option("--convention", type=click.Choice(CONVENTIONS), default=None,
              help="official = rouge 1.0.1 as the organisers run it; rouge-score = Google's semantics.")
@click.option("--multi-ref", type=click.Choice(MULTI_REF_RULES), default=None,
              help="How several references per row combine (default: [metric] multi_ref, mean).")
@click.option("--by", "by_column", default=None, help="Break the score down by a reference column, e.g. topic.")
@click.option("--strict", is_flag=True, help="Refuse empty (or NaN) predictions instead of scoring them as 0.")
@json_option
@with_config(tidies=False)
def score(config, predictions, references, subset, tokenizer, convention, multi_ref, by_column, strict,
          as_json) -> None:
    """Score PREDICTIONS against references: ROUGE-1/2/L F1 and final, all x 100 (0-100, the
    leaderboard's scale; --json too).

    PREDICTIONS is a fname,summary CSV (with --refs), or the name of a source under runs/: its
    whole OOF (every finished fold) as one file, against the labelled rows unless --refs is given.
    Empty predictions score 0 and are counted in a warning on stderr (--strict refuses them).

    Example: competition score runs/lead/fold_0/oof.csv --refs data/train.csv --subset --by topic
    """
    metric = config.metric
    settings = dict(by_column=by_column, strict=strict, subset=subset)
    if Path(predictions).is_file():
        if references is None:
            raise ConfigError(f"score {predictions}: give the reference file with --refs (e.g. --refs data/train.csv)")
        report = score_files(predictions, references, tokenizer or metric.tokenizer, convention or metric.convention,
                             multi_ref or metric.multi_ref, **settings)
    elif predictions in list_sources(config):
        report = score_source(config, predictions, references, tokenizer=tokenizer, convention=convention,
                              multi_ref=multi_ref, **settings)
    elif Path(predictions).suffix or len(Path(predictions).parts) > 1:  # meant as a file: say where it was sought
        raise ConfigError(f"{predictions} not found: check the path of the predictions file (a fname,summary CSV), "
                          f"or name a source under runs/")
    else:
        sources = list_sources(config)
        raise ConfigError(f"{predictions} is neither a file nor a source under runs/ "
                          f"({'sources: ' + ', '.join(sources) if sources else 'no source has run yet'}): "
                          f"name a fname,summary CSV with --refs, or a source")
    if report["empty_predictions"]:
        click.echo(f"warning: {report['empty_predictions']} of {report['rows']} predictions in {predictions} are "
                   f"empty and score 0 (--strict refuses them)", err=True)
    if report["left_out"]:
        click.echo(f"note: --subset: scored the {report['rows']} reference rows {predictions} predicts; "
                   f"{report['left_out']} reference rows have no prediction and were left out", err=True)
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
