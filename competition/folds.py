"""K-fold splits of the labelled rows, written once and checked by every later stage.

folds/folds.csv (fname,fold) and folds/folds.json (k, seed, strategy, the sha256 of the rows they
were built from, rows per fold) are tracked in git: changing them silently would invalidate every
out-of-fold prediction, so a rebuild that differs needs force, and the runner, cv and ensembles
refuse data that no longer matches (FoldMismatch).

Strategies:
- ``length`` (default): stratified by dialogue-length quantile bins (ROUGE varies with length);
- ``random``: a seeded shuffle;
- ``stratify:COLUMN``: stratified by a column, classes rarer than k merged into one;
- ``group:COLUMN``: all rows sharing a value stay in one fold (largest groups placed first).

With ``[cv] near_duplicates`` > 0 (the default, 0.5), each cluster of near-duplicate dialogues (rows
linked by a TF-IDF cosine at or above it, shift.py) also stays in one fold, whatever the strategy:
DialogSum's train holds hundreds of copies with their own summaries, and a fold that splits them
pays out a memorised summary that the test set never pays (README "Why folds group near-duplicates").
Assignments depend only on the rows (by fname), k, seed, strategy and clusters, never on row order.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .choices import parse_strategy
from .data import rows_sha256
from .errors import ConfigError, FoldMismatch, MissingFolds
from .predictions import atomic_write_text
from .shift import near_duplicate_clusters
from .similarity import cluster_stats, components

_LENGTH_BINS = 10


def labelled_rows(config, data) -> pd.DataFrame:
    """The rows the folds split: train, plus dev when [cv] include_dev."""
    if data.dev is not None and config.cv.include_dev:
        return pd.concat([data.train, data.dev], ignore_index=True)
    return data.train


def _order_within(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions sorted by key, ties in a seeded random order."""
    return np.lexsort((rng.permutation(len(keys)), keys))


def _stratified(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Deal rows to folds in turn, class by class (shuffled inside each), so every fold gets its
    share of every class and fold sizes differ by at most one."""
    order = _order_within(labels, rng)
    folds = np.empty(len(labels), dtype=np.int64)
    folds[order] = np.arange(len(labels)) % k
    return folds


def _grouped(groups: np.ndarray, k: int, rng: np.random.Generator, column: str) -> np.ndarray:
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) < k:
        raise ConfigError(f"group:{column} has {len(names)} distinct value(s), fewer than k = {k}: "
                          f"lower k or choose another column")
    # Largest groups first (random among equal sizes), each to the currently smallest fold.
    order = np.lexsort((rng.permutation(len(names)), -sizes))
    totals = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(len(names), dtype=np.int64)
    for group in order:
        fold = int(np.argmin(totals))
        fold_of_group[group] = fold
        totals[fold] += sizes[group]
    return fold_of_group[inverse]


def _first_seen(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def _stratified_units(labels: np.ndarray, units: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Folds for rows that move in units (near-duplicate clusters): each unit takes its most common
    label and goes, label by label and largest first, to the fold with the fewest rows of that label
    (then the fewest rows), so labels and sizes stay balanced while no unit is split."""
    unit_count = int(units.max()) + 1
    sizes = np.bincount(units, minlength=unit_count)
    label_ids, label_of_row = np.unique(labels, return_inverse=True)
    per_unit = np.zeros((unit_count, len(label_ids)), dtype=np.int64)
    np.add.at(per_unit, (units, label_of_row), 1)
    unit_label = per_unit.argmax(axis=1)  # the most common label, the smallest on ties
    order = np.lexsort((rng.permutation(unit_count), -sizes, unit_label))
    label_totals = np.zeros((len(label_ids), k), dtype=np.int64)
    totals = np.zeros(k, dtype=np.int64)
    fold_of_unit = np.empty(unit_count, dtype=np.int64)
    for unit in order:
        label = unit_label[unit]
        fold = int(np.lexsort((np.arange(k), totals, label_totals[label]))[0])
        fold_of_unit[unit] = fold
        label_totals[label, fold] += sizes[unit]
        totals[fold] += sizes[unit]
    return fold_of_unit[units]


def _joined(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Groups of rows linked by an equal value or by one cluster (connected components)."""

    links = []
    for labels in (pd.factorize(values)[0], clusters):
        order = np.argsort(labels, kind="stable")
        same = labels[order[1:]] == labels[order[:-1]]
        links.append(np.stack([order[:-1][same], order[1:][same]], axis=1))
    return components(len(values), np.concatenate(links))


def assign_folds(rows: pd.DataFrame, k: int = 5, seed: int = 42, strategy: str = "length",
                 clusters: np.ndarray | None = None) -> pd.DataFrame:
    """DataFrame(fname, fold) in the order of `rows`; the same for any order of the same rows.

    `clusters` (one label per row of `rows`) are kept whole in one fold each; None (or all
    singletons) gives the plain strategy.
    """
    plan = parse_strategy(strategy)
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"k = {k!r}: use at least 2 folds")
    if len(rows) < k:
        raise ConfigError(f"k = {k} folds but only {len(rows)} labelled row(s): lower k")
    if plan.column and plan.column not in rows.columns:
        raise ConfigError(f"fold strategy {plan.text!r}: no column {plan.column!r} in the data "
                          f"(has {', '.join(rows.columns)})")
    if clusters is not None and len(clusters) != len(rows):
        raise ValueError(f"{len(clusters)} cluster labels for {len(rows)} rows")
    order = np.argsort(rows["fname"].to_numpy(), kind="stable")
    by_fname = rows.iloc[order].reset_index()
    units = None
    if clusters is not None and len(np.unique(clusters)) < len(rows):
        units = _first_seen(np.asarray(clusters)[order])  # numbered by fname order: row order never matters
    rng = np.random.default_rng(seed)
    if plan.kind == "group":
        values = by_fname[plan.column].astype(str).to_numpy().copy()
        empty = values == ""
        values[empty] = "\0row:" + by_fname["fname"].to_numpy()[empty]  # no value: a group of its own
        if units is not None:
            values = _joined(values, units).astype(str)
        folds = _grouped(values, k, rng, plan.column)
    else:
        if plan.kind == "random":
            labels = np.zeros(len(by_fname), dtype=np.int64)
        elif plan.kind == "length":
            lengths = by_fname["dialogue"].str.len().to_numpy()
            rank = np.lexsort((by_fname["fname"].to_numpy(), lengths)).argsort()
            bins = max(1, min(_LENGTH_BINS, len(by_fname) // k))
            labels = rank * bins // len(by_fname)
        else:
            classes = by_fname[plan.column].astype(str)
            counts = classes.value_counts()
            rare = set(counts[counts < k].index)
            # Classes rarer than k cannot be in every fold: pooled they still spread evenly.
            classes = classes.where(~classes.isin(rare), "\0rare")
            labels = pd.factorize(classes, sort=True)[0]
        if units is None:
            folds = _stratified(labels, k, rng)
        else:
            if units.max() + 1 < k:
                raise ConfigError(f"the {len(by_fname)} labelled rows form {units.max() + 1} near-duplicate "
                                  f"cluster(s), fewer than k = {k}: lower k or raise [cv] near_duplicates")
            folds = _stratified_units(labels, units, k, rng)
    assigned = pd.Series(folds, index=by_fname["index"]).loc[rows.index]
    return pd.DataFrame({"fname": rows["fname"].to_numpy(), "fold": assigned.to_numpy().astype(int)})


# `folds build` without --force rewrites folds.json when the split it makes is the one in folds.csv
# and refuses when it differs; --force replaces the split and so invalidates every prediction.
REBUILD = ("run `competition folds build` (it keeps an unchanged split and rewrites folds.json); "
           "add --force only if it refuses, which invalidates runs/")


def folds_paths(config) -> tuple[Path, Path]:
    """(folds.csv, folds.json) in the workspace."""
    csv_path = config.resolve(config.cv.folds_file)
    return csv_path, csv_path.with_suffix(".json")


def _csv_text(folds: pd.DataFrame) -> str:
    return folds[["fname", "fold"]].to_csv(index=False, lineterminator="\n")


def build_folds(config, rows: pd.DataFrame, k: int | None = None, seed: int | None = None,
                strategy: str | None = None, force: bool = False) -> dict:
    """Split `rows` and write folds.csv + folds.json; k/seed/strategy default to [cv], and
    near-duplicate clusters at [cv] near_duplicates stay whole (on [metric] tokenizer's tokens).

    Returns folds.json's content plus "path" and "changed" (False when identical files were
    already there). Refuses to replace different folds unless `force`.
    """
    # The near-duplicate search needs scipy and sklearn: loaded when folds are built, not with the config.

    k = config.cv.k if k is None else k
    seed = config.cv.seed if seed is None else seed
    strategy = config.cv.strategy if strategy is None else strategy
    threshold = float(config.cv.near_duplicates)
    clusters = near_duplicate_clusters(list(rows["dialogue"]), config.metric.tokenizer, threshold)
    folds = assign_folds(rows, k, seed, strategy, clusters)
    csv_path, json_path = folds_paths(config)
    sizes = np.bincount(folds["fold"].to_numpy(), minlength=k)
    info = {"k": k, "seed": seed, "strategy": parse_strategy(strategy).text,
            "include_dev": bool(config.cv.include_dev), "rows": int(len(folds)),
            "rows_per_fold": [int(n) for n in sizes], "data_sha256": rows_sha256(rows)}
    if threshold > 0:
        info["near_duplicates"] = {"threshold": threshold, "tokenizer": config.metric.tokenizer,
                                   **cluster_stats(clusters)}
    csv_text = _csv_text(folds)
    info["folds_sha256"] = hashlib.sha256(csv_text.encode()).hexdigest()
    json_text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    same_folds = csv_path.exists() and csv_path.read_text(encoding="utf-8") == csv_text
    unchanged = same_folds and json_path.exists() and json_path.read_text(encoding="utf-8") == json_text
    # Only a change of assignments invalidates predictions; a missing or outdated folds.json is rewritten.
    if csv_path.exists() and not same_folds and not force:
        raise FoldMismatch(f"{csv_path} already exists with different folds; replacing them invalidates every "
                           f"out-of-fold prediction under runs/: pass --force to rebuild anyway")
    if not unchanged:
        atomic_write_text(csv_path, csv_text)
        atomic_write_text(json_path, json_text)
    return {**info, "path": str(csv_path), "changed": not unchanged}


def load_folds(config) -> pd.DataFrame:
    """folds.csv as DataFrame(fname, fold:int), in file order."""
    csv_path, _ = folds_paths(config)
    if not csv_path.exists():
        raise MissingFolds(f"{csv_path} not found: run `competition folds build` first")
    folds = pd.read_csv(csv_path, dtype={"fname": str}, keep_default_na=False)
    if list(folds.columns[:2]) != ["fname", "fold"] or not pd.api.types.is_integer_dtype(folds["fold"]):
        raise FoldMismatch(f"{csv_path}: expected integer columns fname,fold: rebuild it with "
                           f"`competition folds build --force`")
    if folds["fname"].duplicated().any():
        raise FoldMismatch(f"{csv_path}: fname {folds['fname'][folds['fname'].duplicated()].iloc[0]!r} is listed "
                           f"twice: rebuild it with `competition folds build --force`")
    return folds[["fname", "fold"]].astype({"fold": int})


def folds_info(config) -> dict:
    """folds.json as a dict ({} when it is absent; check_folds refuses folds.csv without it)."""
    _, json_path = folds_paths(config)
    if not json_path.exists():
        return {}
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FoldMismatch(f"{json_path} is not valid JSON ({error}): restore it from git, or {REBUILD}") from None
    if not isinstance(info, dict):
        raise FoldMismatch(f"{json_path} should hold a JSON object: restore it from git, or {REBUILD}")
    return info


def folds_sha256(config) -> str:
    """sha256 of folds.csv's bytes: what out-of-fold predictions depend on."""
    csv_path, _ = folds_paths(config)
    if not csv_path.exists():
        raise MissingFolds(f"{csv_path} not found: run `competition folds build` first")
    return hashlib.sha256(csv_path.read_bytes()).hexdigest()


def check_folds(config, train_rows: pd.DataFrame) -> pd.DataFrame:
    """The folds, after checking they were built from exactly `train_rows` (else FoldMismatch)."""
    folds = load_folds(config)
    csv_path, json_path = folds_paths(config)
    info = folds_info(config)
    rebuild = f"restore the data, or {REBUILD}"
    if not info:
        # Without the sha256 an edited dialogue or summary under the same fname would go unnoticed.
        raise FoldMismatch(f"{json_path} is missing (or empty) beside {csv_path}, so the data cannot be checked "
                           f"against the rows the folds were built from: restore it from git, or {REBUILD}")
    if bool(info.get("include_dev", False)) != bool(config.cv.include_dev):
        raise FoldMismatch(f"{json_path} was built with include_dev = {str(info.get('include_dev')).lower()} but "
                           f"[cv] include_dev = {str(config.cv.include_dev).lower()}: set it back, or {REBUILD}")
    if "k" in info and info["k"] != config.cv.k:
        raise FoldMismatch(f"{json_path} holds k = {info['k']} folds but [cv] k = {config.cv.k}: set [cv] k = "
                           f"{info['k']} in competition.toml, or rebuild with `competition folds build --force` "
                           f"(it invalidates runs/)")
    grouping = info.get("near_duplicates") or {}
    built = (float(grouping.get("threshold", 0.0)), grouping.get("tokenizer", config.metric.tokenizer))
    wanted = (float(config.cv.near_duplicates), config.metric.tokenizer)
    if built[0] != wanted[0] or (wanted[0] > 0 and built[1] != wanted[1]):
        said = f"near_duplicates = {built[0]:g}" + (f" on {built[1]} tokens" if built[0] > 0 else "")
        now = f"near_duplicates = {wanted[0]:g}" + (f" on {wanted[1]} tokens" if wanted[0] > 0 else "")
        raise FoldMismatch(f"{json_path} was built with {said} but [cv]/[metric] now say {now}: set them back, or "
                           f"rebuild with `competition folds build --force` (it invalidates runs/)")
    if info.get("data_sha256") != rows_sha256(train_rows):
        raise FoldMismatch(f"the data ({len(train_rows)} labelled rows) no longer matches {json_path} "
                           f"(built from {info.get('rows')} rows, sha256 {str(info.get('data_sha256'))[:12]}...): "
                           f"{rebuild}")
    listed, present = set(folds["fname"]), set(train_rows["fname"])
    if listed != present:
        missing, extra = sorted(present - listed), sorted(listed - present)
        parts = [f"{len(missing)} row(s) not in the folds (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(extra)} fold row(s) not in the data (e.g. {', '.join(extra[:3])})" if extra else ""]
        raise FoldMismatch(f"{csv_path} does not match the data: " + "; ".join(p for p in parts if p)
                           + f": {rebuild}")
    return folds
