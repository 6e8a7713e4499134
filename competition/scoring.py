"""Score prediction files against reference files, joined by fname."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .data import read_split, references
from .errors import DataError
from .metric import METRICS, get_scorer


def join_by_fname(predictions: pd.DataFrame, refs: pd.DataFrame, pred_name: str, ref_name: str) -> pd.DataFrame:
    """Predictions aligned to reference rows; every fname must be on both sides."""
    predicted, referenced = set(predictions["fname"]), set(refs["fname"])
    missing = [f for f in refs["fname"] if f not in predicted]
    extra = [f for f in predictions["fname"] if f not in referenced]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference id(s) have no prediction in {pred_name} (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} predicted id(s) are not in {ref_name} (e.g. {', '.join(extra[:3])})")
        raise DataError("; ".join(parts) + "; predict every row of the reference file and only those")
    return refs.merge(predictions[["fname", "summary"]].rename(columns={"summary": "prediction"}),
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


def score_files(predictions_path: str | Path, references_path: str | Path, tokenizer: str = "kiwi",
                convention: str = "official", multi_ref: str = "mean", by_column: str | None = None,
                strict: bool = False) -> dict:
    """ROUGE of a fname,summary CSV against a reference file (CSV or JSONL); "empty_predictions"
    counts empty (or NaN) summaries, which score 0, and `strict` refuses them."""
    predictions = read_split(predictions_path, "predictions")
    refs = read_split(references_path, "references")
    joined = join_by_fname(predictions, refs, str(predictions_path), str(references_path))
    report = score_frame(joined, tokenizer, convention, multi_ref, by_column)
    if strict and report["empty_predictions"]:
        empty = joined.loc[joined["prediction"].str.strip() == "", "fname"].tolist()
        raise DataError(f"{predictions_path}: {len(empty)} of {len(joined)} predictions are empty (e.g. "
                        f"{', '.join(empty[:3])}); fill them, or drop --strict to score them as 0")
    return report
