"""Score prediction files against reference files, joined by fname."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.folds import labelled_rows
from ..data.loading import load_from_config, read_split, references
from ..data.predictions import load_oof
from ..errors import DataError
from ..text.metric import METRICS, get_scorer


def join_by_fname(predictions: pd.DataFrame, refs: pd.DataFrame, pred_name: str, ref_name: str,
                  subset: bool = False) -> pd.DataFrame:
    """Predictions aligned to reference rows; every fname must be on both sides, or with `subset`
    the reference rows are those the predictions cover (a fold's OOF against the whole train)."""
    predicted, referenced = set(predictions["fname"]), set(refs["fname"])
    missing = [f for f in refs["fname"] if f not in predicted]
    extra = [f for f in predictions["fname"] if f not in referenced]
    if extra or (missing and not subset):
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference id(s) have no prediction in {pred_name} (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} predicted id(s) are not in {ref_name} (e.g. {', '.join(extra[:3])})")
        fix = "predict every row of the reference file and only those"
        if missing and not extra:
            fix = (f"pass --subset to score only the {len(refs) - len(missing)} reference rows predicted, or {fix}")
        raise DataError("; ".join(parts) + f"; {fix}")
    duplicated = predictions["fname"][predictions["fname"].duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{len(duplicated)} id(s) are predicted more than once in {pred_name} (e.g. "
                        f"{', '.join(duplicated[:3])}): keep one prediction per row")
    covered = refs[refs["fname"].isin(predicted)] if subset else refs
    return covered.merge(predictions[["fname", "summary"]].rename(columns={"summary": "prediction"}),
                         on="fname", how="left", validate="one_to_one")


def percent_report(result) -> dict:
    """RougeResult.as_dict with precision, recall and F1 x 100: every score a person or a script
    reads is on the final's scale (0-100)."""
    report = result.as_dict()
    for metric in METRICS:
        report[metric] = {stat: value * 100 for stat, value in report[metric].items()}
    return report


def score_frame(joined: pd.DataFrame, tokenizer: str, convention: str, multi_ref: str,
                by_column: str | None = None) -> dict:
    """Corpus scores (0-100) of a joined frame (prediction + reference columns), optionally per group."""
    scorer = get_scorer(tokenizer, convention, multi_ref)
    result = scorer.score(list(joined["prediction"]), references(joined))
    report = percent_report(result)
    report["empty_predictions"] = int((joined["prediction"].str.strip() == "").sum())
    if by_column:
        if by_column not in joined.columns:
            raise DataError(f"--by {by_column}: no such column in the references (has {', '.join(joined.columns)})")
        report["by"] = {}
        for group, positions in joined.groupby(by_column, sort=True).indices.items():
            part = type(result)(result.per_row[positions])
            report["by"][str(group)] = percent_report(part)
    return report


def score_predictions(predictions: pd.DataFrame, refs: pd.DataFrame, pred_name: str, ref_name: str,
                      tokenizer: str = "kiwi", convention: str = "official", multi_ref: str = "mean",
                      by_column: str | None = None, strict: bool = False, subset: bool = False) -> dict:
    """ROUGE of fname,summary predictions against reference rows (see score_files); "left_out"
    counts the reference rows `subset` dropped for having no prediction."""
    joined = join_by_fname(predictions, refs, pred_name, ref_name, subset)
    report = score_frame(joined, tokenizer, convention, multi_ref, by_column)
    report["left_out"] = len(refs) - len(joined)
    if strict and report["empty_predictions"]:
        empty = joined.loc[joined["prediction"].str.strip() == "", "fname"].tolist()
        raise DataError(f"{pred_name}: {len(empty)} of {len(joined)} predictions are empty (e.g. "
                        f"{', '.join(empty[:3])}); fill them, or drop --strict to score them as 0")
    return report


def score_files(predictions_path: str | Path, references_path: str | Path, tokenizer: str = "kiwi",
                convention: str = "official", multi_ref: str = "mean", by_column: str | None = None,
                strict: bool = False, subset: bool = False) -> dict:
    """ROUGE of a fname,summary CSV against a reference file (CSV or JSONL); "empty_predictions"
    counts empty (or NaN) summaries, which score 0, and `strict` refuses them; `subset` scores only
    the reference rows the file predicts ("left_out" counts the others)."""
    predictions = read_split(predictions_path, "predictions")
    refs = read_split(references_path, "references")
    return score_predictions(predictions, refs, str(predictions_path), str(references_path), tokenizer, convention,
                             multi_ref, by_column, strict, subset)


def score_source(config, name: str, references_path: str | Path | None = None, by_column: str | None = None,
                 strict: bool = False, subset: bool = False, tokenizer: str | None = None,
                 convention: str | None = None, multi_ref: str | None = None) -> dict:
    """The whole OOF of source `name` (every finished fold, runs/NAME/fold_K/oof.csv) scored as one
    file, against the workspace's labelled rows (train, plus dev with [cv] include_dev) or
    `references_path`; the [metric] settings unless given."""
    oof = load_oof(config, name)
    if references_path is None:
        refs = labelled_rows(config, load_from_config(config))
        ref_name = "the labelled rows of " + " and ".join(
            [config.data.train] + ([config.data.dev] if config.cv.include_dev and config.data.dev else []))
    else:
        refs, ref_name = read_split(references_path, "references"), str(references_path)
    metric = config.metric
    return score_predictions(oof, refs, f"the OOF of {name} (runs/{name}/fold_*/oof.csv)", ref_name,
                             tokenizer or metric.tokenizer, convention or metric.convention,
                             multi_ref or metric.multi_ref, by_column, strict, subset)
