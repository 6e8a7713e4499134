"""The local CV leaderboard, recomputed from the stored out-of-fold predictions of every source.

A source (candidate or ensemble) ranks only when its OOF covers every fold row exactly once with
the current folds; otherwise it is listed as incomplete, after the complete ones, with the reason.
Every score here is on one scale: ROUGE F1 x 100, like the final (the mean of R1/R2/RL).
Beside the OOF final, each source gets a test-matched final (OOF rows weighted so that their
similarity to their training folds is distributed as the test's similarity to train, shift.py)
and, for the dev hold-out, the final on all dev rows and on those with no near-duplicate in train.
Every text is tokenised once per process (the metric's cache), so this takes seconds.
"""
from __future__ import annotations

import difflib
import functools

import numpy as np
import pandas as pd

from ..data.folds import check_folds, grouping_threshold, labelled_rows
from ..data.loading import load_from_config, references
from ..data.predictions import done_folds, list_sources, load_dev, load_meta, load_oof
from ..data.shift import profile_weights, workspace_profile
from ..errors import FoldMismatch, UnknownCandidate
from ..progress import progress as show_progress
from ..text.metric import METRICS, RougeResult, get_scorer
from ..workspace.config import Config
from .provenance import input_hashes, source_problems


def _scorer(config: Config):
    return get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)


def _labelled(config: Config, data_dir=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, pd.DataFrame]:
    """(folds checked against the data, labelled rows by fname, hold-out dev or None, test rows)."""

    data = load_from_config(config, data_dir)
    rows = labelled_rows(config, data)
    folds = check_folds(config, rows)
    dev = data.dev if data.dev is not None and not config.cv.include_dev else None
    return folds, rows.drop_duplicates("fname").set_index("fname"), dev, data.test


def _oof_result(config: Config, oof: pd.DataFrame, labelled: pd.DataFrame, name: str,
                label_refs: list[list[str]] | None = None) -> RougeResult:
    """ROUGE of each OOF row; `label_refs` = references(labelled) when the caller has them (cv
    scores every source against the same rows)."""
    positions = labelled.index.get_indexer(oof["fname"])
    if (positions < 0).any():
        raise FoldMismatch(f"runs/{name} has out-of-fold rows that are not in the data (e.g. "
                           f"{oof['fname'].iloc[int(np.argmax(positions < 0))]}): "
                           f"re-run it with `competition run {name} --force`")
    if label_refs is None:
        refs = references(labelled.iloc[positions].reset_index())
    else:
        refs = [label_refs[position] for position in positions]
    return _scorer(config).score(oof["summary"].tolist(), refs)


def oof_scores(config: Config, name: str, data_dir=None) -> RougeResult:
    """ROUGE of each row of `load_oof(config, name)`, in that order."""

    _, labelled, _, _ = _labelled(config, data_dir)
    return _oof_result(config, load_oof(config, name), labelled, name)


# A resample-count matrix is cached only up to this many cells (8 bytes each, 2 matrices kept: at
# most 240 MB held by the process); 12.5k rows x 1,000 resamples fits, larger runs draw per call.
COUNTS_CELLS = 15_000_000


@functools.lru_cache(maxsize=2)
def _resample_counts(rows: int, resamples: int, seed: int) -> np.ndarray | None:
    """(resamples, rows): how often each row is drawn in each resample. Every call with the same
    arguments (each source of one `cv`, OOF and test-matched) uses the same draws, so they are
    counted once and each interval is a matrix-vector product; None when the matrix is too big."""
    if rows * resamples > COUNTS_CELLS:
        return None
    counts = np.empty((resamples, rows))
    for start, drawn in _draws(rows, resamples, seed):
        offsets = drawn + np.arange(len(drawn))[:, None] * rows
        counts[start:start + len(drawn)] = np.bincount(offsets.ravel(), minlength=drawn.size).reshape(drawn.shape)
    return counts


def _draws(rows: int, resamples: int, seed: int):
    """(first resample, drawn row indices) blocks of at most ~2M draws: bounded memory on 12k+ rows."""
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // rows)
    for start in range(0, resamples, block):
        yield start, rng.integers(0, rows, size=(min(block, resamples - start), rows))


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int, level: float = 0.95,
                       weights: np.ndarray | None = None) -> list[float]:
    """Percentile interval of the (weighted) mean of `values` over row resamples (with replacement);
    [None, None] without rows or resamples ([cv] bootstrap = 0)."""
    if len(values) == 0 or resamples < 1:
        return [None, None]
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=float)
    counts = _resample_counts(len(values), resamples, seed)
    if counts is not None:
        totals, sums = counts @ weights, counts @ (values * weights)
    else:
        totals, sums = np.empty(resamples), np.empty(resamples)
        for start, drawn in _draws(len(values), resamples, seed):
            totals[start:start + len(drawn)] = weights[drawn].sum(axis=1)
            sums[start:start + len(drawn)] = (values * weights)[drawn].sum(axis=1)
    means = sums / np.where(totals > 0, totals, 1.0)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def member(values: pd.Series, allowed: pd.Index) -> np.ndarray:
    """Which of `values` are in `allowed` (unique labels): pandas' isin on its Arrow strings takes
    ~30x longer, which a 12k-row cv paid twice per source."""
    return (allowed if allowed.is_unique else allowed.unique()).get_indexer(values) >= 0


def coverage(folds: pd.DataFrame, oof: pd.DataFrame) -> dict:
    """How the OOF rows cover the fold rows: each should appear once, in its own fold."""
    counts = oof["fname"].value_counts()
    expected = folds.set_index("fname")["fold"]
    present = counts.reindex(expected.index, fill_value=0)
    first = oof.drop_duplicates("fname").set_index("fname")["fold"]
    shared = expected.index.intersection(first.index)
    return {"missing": int((present == 0).sum()), "duplicated": int((counts > 1).sum()),
            "extra": int((~member(oof["fname"], expected.index)).sum()),
            "wrong_fold": int((first.loc[shared] != expected.loc[shared]).sum())}


def _source_meta(config: Config, name: str) -> dict:
    meta = load_meta(config, name) or {}
    if not meta:
        for fold in done_folds(config, name):
            meta = load_meta(config, name, fold) or {}
            if meta:
                break
    return meta


def test_matched(config: Config, result: RougeResult, fnames: pd.Series, profile) -> dict:
    """The OOF scores of rows `fnames` weighted to the test's similarity profile (shift.py)."""
    weights, info = profile_weights(profile, fnames)
    if not len(weights):
        return {**{metric: 0.0 for metric in METRICS}, "final": 0.0, "ci95": [None, None], **info}
    f1 = (result.per_row[:, :, 2] * weights[:, None]).sum(axis=0) / weights.sum() * 100
    return {**dict(zip(METRICS, f1.tolist())), "final": float(f1.mean()),
            "ci95": bootstrap_interval(result.row_finals, config.cv.bootstrap, config.cv.seed, weights=weights),
            **info}


def _dev_scores(config: Config, predicted: pd.Series, dev: pd.DataFrame, profile) -> dict:
    """Dev final on every dev row, and on the rows with no near-duplicate (cosine >= [cv]
    near_duplicates) in the labelled rows: the part of dev that looks like the test."""

    scores = _scorer(config).score(predicted.loc[dev["fname"]].tolist(), references(dev))
    out = {"dev_final": scores.final, "dev_novel_final": None, "dev_novel_rows": None}
    threshold = grouping_threshold(config, unbuilt=0.0)
    if threshold > 0 and profile is not None and profile.dev is not None:
        novel = profile.dev.reindex(dev["fname"]).to_numpy() < threshold
        out["dev_novel_rows"] = int(novel.sum())
        out["dev_novel_final"] = float(scores.row_finals[novel].mean()) if novel.any() else None
    return out


def _entry(config: Config, name: str, folds: pd.DataFrame, labelled: pd.DataFrame, dev: pd.DataFrame | None,
           hashes: dict, profile=None, label_refs: list[list[str]] | None = None) -> dict:
    k = int(folds["fold"].max()) + 1
    meta = _source_meta(config, name)
    try:
        oof = load_oof(config, name)
    except UnknownCandidate:  # a test output without any finished fold
        oof = pd.DataFrame({"fname": pd.Series(dtype=str), "fold": pd.Series(dtype=int),
                            "summary": pd.Series(dtype=str)})
    covered = coverage(folds, oof)
    done = sorted(set(oof["fold"].astype(int)) & set(range(k)))
    # Score each fold row once (the first prediction if duplicated), only rows of the current folds.
    usable = oof[member(oof["fname"], pd.Index(folds["fname"]))].drop_duplicates("fname").reset_index(drop=True)
    result = _oof_result(config, usable, labelled, name, label_refs)
    fold_of = folds.set_index("fname")["fold"].loc[usable["fname"]].to_numpy()
    per_fold = np.array([result.per_row[fold_of == fold][:, :, 2].mean(axis=0)
                         for fold in done if (fold_of == fold).any()]).reshape(-1, 3)
    fold_finals = per_fold.mean(axis=1) * 100
    ddof = 1 if len(per_fold) > 1 else 0
    problems = [f"{n} {what}" for what, n in covered.items() if n] + source_problems(config, name, hashes, k,
                                                                                      missing_ok=True)
    if len(done) < k:
        problems.insert(0, f"folds {len(done)}/{k}")
    dev_scores = {"dev_final": None, "dev_novel_final": None, "dev_novel_rows": None}
    dev_frame = load_dev(config, name) if dev is not None else None
    if dev_frame is not None:
        predicted = dev_frame.drop_duplicates("fname").set_index("fname")["summary"]
        if set(predicted.index) == set(dev["fname"]):
            dev_scores = _dev_scores(config, predicted, dev, profile)
        else:
            problems.append("dev output does not cover dev")
    return {
        "name": name,
        "kind": meta.get("kind", ""),
        "folds_done": len(done),
        "k": k,
        "complete": not problems,
        "problems": problems,
        "coverage": covered,
        "rows": int(len(usable)),
        "oof": {**{metric: value * 100 for metric, value in result.f1.items()}, "final": result.final},
        "fold_mean": {**dict(zip(METRICS, (per_fold.mean(axis=0) * 100).tolist() if len(per_fold) else [0.0] * 3)),
                      "final": float(fold_finals.mean()) if len(fold_finals) else 0.0},
        "fold_std": {**dict(zip(METRICS, (per_fold.std(axis=0, ddof=ddof) * 100).tolist() if len(per_fold)
                                else [0.0] * 3)),
                     "final": float(fold_finals.std(ddof=ddof)) if len(fold_finals) else 0.0},
        "fold_final_mean": float(fold_finals.mean()) if len(fold_finals) else 0.0,
        "fold_final_std": float(fold_finals.std(ddof=ddof)) if len(fold_finals) else 0.0,
        **dev_scores,
        "ci95": bootstrap_interval(result.row_finals, config.cv.bootstrap, config.cv.seed),
        "test_matched": None if profile is None else test_matched(config, result, usable["fname"], profile),
        "config_hash": meta.get("config_hash", ""),
    }


def pick_score(entry: dict, pick_by: str) -> float:
    """The CV score a source is chosen by: its test-matched final (pick_by "test_matched", when
    computed) or its OOF final."""
    matched = entry.get("test_matched") if pick_by == "test_matched" else None
    return matched["final"] if matched else entry["oof"]["final"]


def leaderboard(config: Config, names: list[str] | None = None, data_dir=None, progress: bool = False) -> list[dict]:
    """One entry per source with predictions (or the named ones): complete sources by the CV [cv]
    pick_by names (best first: the test-matched final by default), then incomplete ones, never
    silently ranked among them."""

    sources = list_sources(config)
    if names:
        for name in names:
            if name not in sources:
                close = difflib.get_close_matches(name, sources, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UnknownCandidate(f"no predictions for {name!r} under {config.resolve('runs')}{hint}: "
                                       f"run `competition run {name}` first")
        sources = list(dict.fromkeys(names))
    if not sources:
        return []
    folds, labelled, dev, test = _labelled(config, data_dir)
    hashes = input_hashes(config, labelled.reset_index(), test, dev)
    profile = workspace_profile(config, folds, labelled.reset_index(), dev, test)
    label_refs = references(labelled.reset_index())
    board = [_entry(config, name, folds, labelled, dev, hashes, profile, label_refs)
             for name in show_progress(sources, desc="cv", unit="sources", enabled=progress)]
    return sorted(board, key=lambda entry: (not entry["complete"], -pick_score(entry, config.cv.pick_by),
                                            entry["name"]))
