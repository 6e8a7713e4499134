"""`competition data check`."""
from __future__ import annotations

import click

from ..data.folds import AUTO_GRID, grouping_threshold
from ..data.loading import describe, load_from_config
from ..data.shift import duplicate_report, exact_duplicates, plot_nearest
from .common import json_option, nearest_table, png_option, print_json, table, with_config


@click.group("data")
def data_group() -> None:
    """Check the competition files."""


def _duplicate_lines(report: dict) -> list[str]:
    exact = report["exact_duplicates"]
    lines = []
    for key, how in (("whitespace", "identical up to white space"), ("case_punctuation", "ignoring case and punctuation")):
        found = exact[key]
        lines.append(f"Duplicate dialogues in train, {how}: {found['groups']:,} group(s), {found['rows']:,} rows, "
                     f"{found['summaries_differ']:,} with differing summaries")
    near = report.get("near_duplicates")
    if near:
        lines.append(f"Near-duplicate clusters in train (cosine >= {report['threshold']:g} on {report['tokenizer']} "
                     f"tokens): {near['clusters']:,} cluster(s) holding {near['rows_in_clusters']:,} rows, "
                     f"largest {near['largest']}")
    return lines


def _shift_advice(report: dict) -> str:
    """One line: is train closer to itself than the test is to train?"""
    nearest = report["nearest"]
    train, test = nearest["train_to_train"], nearest["test_to_train"]
    if not train["rows"] or not test["rows"]:
        return ""
    gap = train["share_at_least"]["0.9"] - test["share_at_least"]["0.9"]
    if gap > 0.02:
        return (f"train is closer to itself than the test is to train ({100 * gap:.1f} points more rows with a "
                f"cosine >= 0.9 neighbour): folds that split near-duplicates overstate CV; keep [cv] near_duplicates "
                f"> 0 and compare sources by the test-matched final of `competition cv`")
    return "train is no closer to itself than the test is to train: plain folds are fair here"


@data_group.command("check")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with train.csv, dev.csv, test.csv, sample_submission.csv (default: [data] dir).")
@click.option("--no-tokens", is_flag=True,
              help="Skip everything that tokenises: morpheme counts and the near-duplicate search (faster).")
@png_option("Draw the nearest-neighbour cosines (train -> train, dev -> train, test -> train) into this PNG.")
@json_option
@with_config(tidies=False)
def check(config, data_dir, no_tokens, plot_path, as_json) -> None:
    """Validate the data files and print rows, lengths, tags, overlap between splits, duplicates
    within train, and how close train is to itself against how close dev and test are to train.

    Similarity is the TF-IDF cosine of dialogues on the metric's tokens (Kiwi morphemes for Korean)
    to the nearest train dialogue; clusters use [cv] near_duplicates (with "auto", the threshold
    `folds build` chose, or 0.5 before folds exist). A train set much closer to
    itself than the test is to train is what makes plain folds overstate CV.

    Example: competition data check --data data/ --plot similarity.png
    """

    if no_tokens and plot_path:
        raise click.UsageError("--plot draws the near-duplicate search, which --no-tokens skips: drop one of them")
    data = load_from_config(config, data_dir)
    summary = describe(data, None if no_tokens else config.metric.tokenizer)
    if no_tokens:
        summary["duplicates"] = {"exact_duplicates": exact_duplicates(data.train)}
    else:
        # "auto": the threshold `folds build` chose, or before it the lowest it tries.
        threshold = grouping_threshold(config, unbuilt=AUTO_GRID[0])
        summary["duplicates"], values = duplicate_report(data.train, data.dev, data.test, config.metric.tokenizer,
                                                         threshold)
        if plot_path:
            summary["plot"] = str(plot_nearest(values, plot_path, threshold))
    if as_json:
        print_json(summary)
        return
    click.echo("Data OK: " + ", ".join(f"{name} {rows} rows" for name, rows in summary["rows"].items()))
    rows = []
    for split, stats in summary["lengths"].items():
        for measure, values in stats.items():
            rows.append([split, measure, f"{values['median']:.0f}", f"{values['p95']:.0f}", values["max"]])
    click.echo(table(rows, ["split", "length", "median", "p95", "max"]))
    tags = ", ".join(f"{tag} {count}" for tag, count in summary["tags"].items())
    click.echo(f"Tags: {tags or 'none'}")
    overlap = ", ".join(f"{pair} {count}" for pair, count in summary["overlap"].items())
    click.echo(f"Identical dialogues across splits (leakage check): {overlap or 'n/a'}")
    report = summary["duplicates"]
    for line in _duplicate_lines(report):
        click.echo(line)
    if "nearest" in report:
        click.echo(nearest_table(report["nearest"]))
        click.echo(_shift_advice(report))
    if plot_path:
        click.echo(f"Plot written to {summary['plot']}")


def register(main: click.Group) -> None:
    main.add_command(data_group)
