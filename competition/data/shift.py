"""How close the CV rows are to their training folds, against how close the test is to train.

DialogSum's train set repeats dialogues (copies and light edits, each with its own summary); the
test set barely overlaps with train. Folds that split the copies reward memorisation that the test
never pays, so CV overestimates every source and ranks them wrong. This module measures that
(duplicate groups, near-duplicate clusters, nearest-neighbour similarity train -> train, dev ->
train, test -> train), finds the clusters the folds keep whole, and weights OOF rows so that their
similarity to their training folds is distributed as the test's similarity to train: the
test-matched CV score.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write_text
from ..text.similarity import cluster_stats, components, nearest, self_nearest, similarity_summary, tfidf_vectors

# Test-matched weights: histogram bins of cosine over [0, 1], and the largest weight one row gets.
MATCH_BINS = 10
MATCH_CLIP = 10.0
_CACHE_VERSION = "1"  # bump when the vectors or the search change
_CACHE_KEEP = 8  # profiles kept in the cache folder (the newest), one per folds/data state
_PUNCTUATION = re.compile(r"[^\w\s]+")


def _whitespace(text: str) -> str:
    return " ".join(text.split())


def _case_punctuation(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def exact_duplicates(rows: pd.DataFrame) -> dict:
    """Dialogues repeated within `rows` after normalisation (white space; also case and punctuation):
    groups, rows in them, and groups whose summaries differ."""
    report = {}
    summaries = rows["summary"].map(_whitespace) if "summary" in rows.columns else None
    for name, normalise in (("whitespace", _whitespace), ("case_punctuation", _case_punctuation)):
        keys = rows["dialogue"].map(normalise)
        repeated = keys.duplicated(keep=False)
        groups = keys[repeated].nunique()
        disagree = 0
        if summaries is not None and groups:
            disagree = int((summaries[repeated].groupby(keys[repeated]).nunique() > 1).sum())
        report[name] = {"groups": int(groups), "rows": int(repeated.sum()), "summaries_differ": disagree}
    return report


def near_duplicate_clusters(dialogues: list[str], tokenizer: str, threshold: float) -> np.ndarray:
    """Cluster label of each dialogue: connected components of pairs with cosine >= threshold."""
    if threshold <= 0 or not dialogues:
        return np.arange(len(dialogues), dtype=np.int64)
    vectors, = tfidf_vectors(dialogues, tokenizer)
    return components(len(dialogues), self_nearest(vectors, threshold).pairs)


def duplicate_report(train: pd.DataFrame, dev: pd.DataFrame | None, test: pd.DataFrame, tokenizer: str,
                     threshold: float) -> tuple[dict, dict[str, np.ndarray]]:
    """What `data check` shows: exact duplicates and near-duplicate clusters within train, and the
    nearest-neighbour cosine of train -> other train rows, dev -> train and test -> train (summaries,
    then the cosines themselves for a plot)."""
    texts = [list(frame["dialogue"]) for frame in (dev, test) if frame is not None]
    train_vectors, *others = tfidf_vectors(list(train["dialogue"]), tokenizer, *texts)
    level = threshold if threshold > 0 else None
    within = self_nearest(train_vectors, level)
    clusters = components(len(train), within.pairs) if level else np.arange(len(train))
    nearest_of = {"train_to_train": within.similarity}
    if dev is not None:
        nearest_of["dev_to_train"] = nearest(others.pop(0), train_vectors).similarity
    nearest_of["test_to_train"] = nearest(others.pop(0), train_vectors).similarity
    return {"tokenizer": tokenizer, "threshold": threshold, "exact_duplicates": exact_duplicates(train),
            "near_duplicates": cluster_stats(clusters),
            "nearest": {name: similarity_summary(values) for name, values in nearest_of.items()}}, nearest_of


@dataclass
class FoldProfile:
    """Nearest-neighbour cosines by fname: each labelled row to the rows of the other folds (what
    its fold's model trained on), each test row and each hold-out dev row to all labelled rows."""

    oof: pd.Series
    test: pd.Series
    dev: pd.Series | None

    def summary(self) -> dict:
        out = {"oof_to_training_folds": similarity_summary(self.oof.to_numpy()),
               "test_to_train": similarity_summary(self.test.to_numpy())}
        if self.dev is not None:
            out["dev_to_train"] = similarity_summary(self.dev.to_numpy())
        return out


def _digest(tokenizer: str, *frames: pd.DataFrame | None) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}\n{tokenizer}\n".encode())
    for frame in frames:
        if frame is None:
            digest.update(b"none\n")
            continue
        ordered = frame.sort_values("fname")
        digest.update(json.dumps(ordered.astype(str).values.tolist(), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def fold_profile(labelled: pd.DataFrame, folds: pd.DataFrame, test: pd.DataFrame, dev: pd.DataFrame | None,
                 tokenizer: str, cache_dir: Path | None = None) -> FoldProfile:
    """The FoldProfile of these rows and folds, read from `cache_dir` when it was computed before
    for exactly the same texts, folds and tokenizer (a damaged cache file is recomputed)."""
    with_folds = labelled[["fname", "dialogue"]].merge(folds[["fname", "fold"]], on="fname", how="inner")
    key = _digest(tokenizer, with_folds, test[["fname", "dialogue"]],
                  None if dev is None else dev[["fname", "dialogue"]])
    path = cache_dir / f"profile-{key[:24]}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            return FoldProfile(pd.Series(stored["oof"], dtype=float), pd.Series(stored["test"], dtype=float),
                               None if stored["dev"] is None else pd.Series(stored["dev"], dtype=float))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # recomputed and rewritten below
    texts = [list(test["dialogue"])] + ([list(dev["dialogue"])] if dev is not None else [])
    vectors, test_vectors, *dev_vectors = tfidf_vectors(list(with_folds["dialogue"]), tokenizer, *texts)
    fold_of = with_folds["fold"].to_numpy()
    profile = FoldProfile(
        pd.Series(nearest(vectors, vectors, fold_of, fold_of).similarity.astype(float), index=with_folds["fname"]),
        pd.Series(nearest(test_vectors, vectors).similarity.astype(float), index=test["fname"].to_numpy()),
        None if dev is None else pd.Series(nearest(dev_vectors[0], vectors).similarity.astype(float),
                                           index=dev["fname"].to_numpy()))
    if path is not None:
        stored = {"oof": profile.oof.round(6).to_dict(), "test": profile.test.round(6).to_dict(),
                  "dev": None if profile.dev is None else profile.dev.round(6).to_dict()}
        atomic_write_text(path, json.dumps(stored, ensure_ascii=False))
        for stale in sorted(cache_dir.glob("profile-*.json"), key=_modified, reverse=True)[_CACHE_KEEP:]:
            stale.unlink(missing_ok=True)
    return profile


def workspace_profile(config, folds: pd.DataFrame, labelled: pd.DataFrame, dev: pd.DataFrame | None,
                      test: pd.DataFrame) -> FoldProfile:
    """fold_profile on [metric] tokenizer's tokens, cached under the workspace's runs/.cache."""
    return fold_profile(labelled, folds, test, dev, config.metric.tokenizer, config.resolve("runs") / ".cache")


def matched_weights(oof_similarity: np.ndarray, test_similarity: np.ndarray, bins: int = MATCH_BINS,
                    clip: float = MATCH_CLIP) -> tuple[np.ndarray, dict]:
    """Weights of OOF rows so that their cosine histogram (bins of equal width over [0, 1]) matches
    the test rows': test share / OOF share of the row's bin, clipped at `clip`, mean 1.

    Also returns the effective sample size (sum w)^2 / sum w^2 and the share of test rows whose
    bin holds no OOF row (mass the weighting cannot represent).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    oof_bin = np.clip(np.searchsorted(edges, oof_similarity, side="right") - 1, 0, bins - 1)
    test_bin = np.clip(np.searchsorted(edges, test_similarity, side="right") - 1, 0, bins - 1)
    oof_share = np.bincount(oof_bin, minlength=bins) / max(len(oof_bin), 1)
    test_share = np.bincount(test_bin, minlength=bins) / max(len(test_bin), 1)
    ratio = np.divide(test_share, oof_share, out=np.zeros(bins), where=oof_share > 0)
    weights = np.minimum(ratio, clip)[oof_bin]
    if weights.sum() == 0:  # no shared bin at all: nothing to match, every row counts the same
        weights = np.ones(len(oof_bin))
    weights = weights / weights.mean() if len(weights) else weights
    info = {"ess": float(weights.sum() ** 2 / (weights ** 2).sum()) if len(weights) else 0.0,
            "unmatched_test_share": float(test_share[oof_share == 0].sum()),
            "bins": bins, "clip": clip}
    return weights, info


def profile_weights(profile: FoldProfile, fnames) -> tuple[np.ndarray, dict]:
    """matched_weights of the OOF rows `fnames` against the test, from a fold profile (a row the
    profile lacks counts as having no neighbour)."""
    return matched_weights(profile.oof.reindex(list(fnames)).fillna(0.0).to_numpy(), profile.test.to_numpy())


def objective_weights(config, folds: pd.DataFrame, labelled: pd.DataFrame, dev: pd.DataFrame | None,
                      test: pd.DataFrame, fnames) -> np.ndarray | None:
    """Per-row weights of the CV objective for the labelled rows `fnames`: None (every row counts
    the same) for [cv] objective = "oof", else the test-matched weights, the same as cv's
    test-matched final gives those rows, so every choice maximises the score cv ranks by."""
    if config.cv.objective != "test_matched":
        return None
    return profile_weights(workspace_profile(config, folds, labelled, dev, test), fnames)[0]


def weighted_mean(values: np.ndarray, row_weights: np.ndarray | None, axis: int = 0):
    """Mean over rows (`axis`), each row weighted by `row_weights` (None: plain mean)."""
    if row_weights is None or not len(row_weights) or row_weights.sum() <= 0:
        return values.mean(axis=axis)
    return np.average(values, axis=axis, weights=row_weights)


def plot_nearest(values: dict[str, np.ndarray], path: str | Path, threshold: float = 0.0,
                 title: str = "Nearest-neighbour similarity") -> Path:
    """A PNG with one cumulative curve per set of nearest-neighbour cosines (x: cosine, y: share of
    rows at or below it): a curve further right is closer to what it is compared with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, series in values.items():
        ordered = np.sort(np.asarray(series, dtype=float))
        if not len(ordered):
            continue
        shares = np.arange(1, len(ordered) + 1) / len(ordered)
        axis.step(ordered, shares, where="post", label=f"{name.replace('_', ' ')} ({len(ordered)} rows)")
    if threshold > 0:
        axis.axvline(threshold, color="grey", linestyle="--", linewidth=1, label=f"near_duplicates = {threshold:g}")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1)
    axis.set_xlabel("TF-IDF cosine to the nearest dialogue")
    axis.set_ylabel("share of rows at or below")
    axis.set_title(f"{title} (a curve further right: closer neighbours)", fontsize=11)
    axis.grid(alpha=0.3)
    # Cumulative curves leave the lower right empty: the legend never covers one there.
    axis.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path
