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

With ``[cv] near_duplicates`` a cosine > 0, each cluster of near-duplicate dialogues (rows linked by
a TF-IDF cosine at or above it, shift.py) also stays in one fold, whatever the strategy: DialogSum's
train holds hundreds of copies with their own summaries, and a fold that splits them pays out a
memorised summary that the test set never pays (README "Why folds group near-duplicates"). With
``"auto"`` (the default) the threshold is calibrated to the test (calibrate_threshold): too low a
threshold makes CV harder than the test, which does have close training neighbours.
Assignments depend only on the rows (by fname), k, seed, strategy and clusters, never on row order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..choices import parse_strategy
from ..errors import ConfigError, FoldMismatch, MissingFolds
from ..files import atomic_write_text
from ..text.similarity import cluster_stats, components, nearest, self_nearest, similarity_summary, tfidf_vectors
from .loading import load_from_config, rows_sha256
from .shift import matched_weights, near_duplicate_clusters

_LENGTH_BINS = 10
# near_duplicates = "auto": the thresholds tried, the pairs kept together whatever is chosen (1% of
# DialogSum's test rows have a train neighbour that close, 25% of CV rows would without grouping),
# and the most test mass the chosen folds may leave with no CV row of the same similarity.
AUTO_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
ALWAYS_TOGETHER = AUTO_GRID[-1]  # every threshold tried keeps pairs this close together
MAX_UNMATCHED = 0.02
_NEIGHBOURS = 32  # per row, enough that nearly every row finds one in another fold among them
# The calibration compares histograms in bins as fine as the grid's step (cv's test-matched final
# uses 10): with 0.1-wide bins, a threshold of 0.85 half fills [0.8, 0.9) with CV rows and hides
# the test rows of [0.85, 0.9), which no CV row resembles.
CALIBRATION_BINS = 20
AUTO_RULE = (f"the largest test-matched effective sample among thresholds leaving <= {MAX_UNMATCHED:.0%} of the "
             f"test's similarity mass unmatched (else the least unmatched), in {CALIBRATION_BINS} bins of cosine; "
             f"pairs >= {ALWAYS_TOGETHER:g} always together")


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


@dataclass
class ThresholdTrial:
    """One threshold of the auto grid: how its folds' CV rows resemble the test (shift.py's
    test-matched weights: effective sample and unmatched test share) and its clusters."""

    threshold: float
    unmatched_test_share: float
    ess: float
    oof_p95: float
    oof_share_at_least_0_5: float
    clusters: int
    rows_in_clusters: int


def oof_nearest_from_neighbours(vectors, found, fold_of: np.ndarray) -> np.ndarray:
    """Each row's cosine to its nearest row in another fold, from its best neighbours (`found`,
    self_nearest with neighbours): the first one in another fold is the nearest there; rows
    whose listed neighbours all share their fold are searched in full."""
    listed = found.neighbours
    valid = listed >= 0
    elsewhere = valid & (fold_of[np.where(valid, listed, 0)] != fold_of[:, None])
    first = elsewhere.argmax(axis=1)
    similarity = np.where(elsewhere.any(axis=1), found.neighbour_similarity[np.arange(len(fold_of)), first], 0.0)
    unresolved = np.flatnonzero(~elsewhere.any(axis=1))
    if len(unresolved):
        similarity[unresolved] = nearest(vectors[unresolved], vectors, fold_of[unresolved], fold_of).similarity
    return similarity.astype(float)


def choose_threshold(trials: list[ThresholdTrial]) -> ThresholdTrial:
    """AUTO_RULE: the folds closest to the test (largest effective sample, i.e. the least
    reweighting) among those that leave at most MAX_UNMATCHED of the test's mass without CV rows
    of its similarity; "least unmatched" alone would pick the highest threshold and bring the
    memorisation leak back. Ties go to the lower (safer) threshold."""
    fitting = [trial for trial in trials if trial.unmatched_test_share <= MAX_UNMATCHED + 1e-12]
    if fitting:
        return max(fitting, key=lambda trial: (round(trial.ess, 6), -trial.threshold))
    return min(trials, key=lambda trial: (round(trial.unmatched_test_share, 12), -trial.ess, trial.threshold))


def calibrate_threshold(rows: pd.DataFrame, test_dialogues: list[str], tokenizer: str, k: int, seed: int,
                        strategy: str, grid: tuple[float, ...] = AUTO_GRID) -> tuple[ThresholdTrial, list[ThresholdTrial], np.ndarray]:
    """(chosen trial, every trial, the chosen clusters): folds built at each threshold of `grid`,
    each CV row's similarity to its training folds compared with the test's to train (histograms
    of CALIBRATION_BINS bins).

    One similarity pass serves every threshold (pairs at the lowest, each row's best neighbours),
    so the grid costs little more than a single threshold.
    """
    assign_folds(rows, k, seed, strategy)  # k, strategy and its column checked once, before any search
    vectors, test_vectors = tfidf_vectors(list(rows["dialogue"]), tokenizer, test_dialogues)
    found = self_nearest(vectors, min(grid), neighbours=_NEIGHBOURS)
    test_similarity = nearest(test_vectors, vectors).similarity.astype(float)
    trials, clusters_of = [], {}
    for threshold in grid:
        clusters = components(len(rows), found.pairs[found.pair_similarity >= threshold])
        try:
            fold_of = assign_folds(rows, k, seed, strategy, clusters)["fold"].to_numpy()
        except ConfigError:  # fewer clusters (or groups joined by them) than folds here: not a candidate
            continue
        oof_similarity = oof_nearest_from_neighbours(vectors, found, fold_of)
        _, matched = matched_weights(oof_similarity, test_similarity, bins=CALIBRATION_BINS)
        summary = similarity_summary(oof_similarity)
        stats = cluster_stats(clusters)
        trials.append(ThresholdTrial(float(threshold), round(matched["unmatched_test_share"], 6),
                                     round(matched["ess"], 3), round(summary["quantiles"]["p95"], 6),
                                     round(summary["share_at_least"]["0.5"], 6), stats["clusters"],
                                     stats["rows_in_clusters"]))
        clusters_of[float(threshold)] = clusters
    if not trials:
        raise ConfigError(f"no near-duplicate threshold in {grid[0]:g}..{grid[-1]:g} leaves {len(rows)} labelled rows in "
                          f"at least k = {k} clusters: lower k, or set [cv] near_duplicates = 0 (off)")
    chosen = choose_threshold(trials)
    return chosen, trials, clusters_of[chosen.threshold]


def is_auto(config) -> bool:
    """[cv] near_duplicates = "auto": the threshold is chosen by `folds build` and read from folds.json."""
    return isinstance(config.cv.near_duplicates, str)


def grouping_threshold(config, unbuilt: float | None = None) -> float | None:
    """The near-duplicate threshold the folds use: [cv] near_duplicates when a number, else the
    one `folds build` chose (folds.json); `unbuilt` when it is "auto" and no folds were built."""
    if not is_auto(config):
        return float(config.cv.near_duplicates)
    grouping = folds_info(config).get("near_duplicates") or {}
    return float(grouping["threshold"]) if grouping.get("auto") and "threshold" in grouping else unbuilt


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
                strategy: str | None = None, force: bool = False, test: pd.DataFrame | None = None) -> dict:
    """Split `rows` and write folds.csv + folds.json; k/seed/strategy default to [cv], and
    near-duplicate clusters at [cv] near_duplicates stay whole (on [metric] tokenizer's tokens);
    "auto" calibrates the threshold on the `test` rows' dialogues (calibrate_threshold; None: the
    workspace's test file).

    Returns folds.json's content plus "path" and "changed" (False when identical files were
    already there). Refuses to replace different folds unless `force`.
    """
    k = config.cv.k if k is None else k
    seed = config.cv.seed if seed is None else seed
    strategy = config.cv.strategy if strategy is None else strategy
    calibration = None
    if is_auto(config):
        if test is None:
            test = load_from_config(config).test
        if not len(test):
            raise ConfigError("[cv] near_duplicates = \"auto\" calibrates on the test dialogues, and there are none: "
                              "add test.csv, or set [cv] near_duplicates to a cosine (e.g. 0.7)")
        chosen, trials, clusters = calibrate_threshold(rows, list(test["dialogue"]), config.metric.tokenizer, k,
                                                       seed, strategy)
        threshold = chosen.threshold
        calibration = {"auto": True, "rule": AUTO_RULE, "grid": [asdict(trial) for trial in trials]}
    else:
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
                                   **cluster_stats(clusters), **(calibration or {})}
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
    built_auto = bool(grouping.get("auto"))
    built = ("auto" if built_auto else float(grouping.get("threshold", 0.0)),
             grouping.get("tokenizer", config.metric.tokenizer))
    wanted = ("auto" if is_auto(config) else float(config.cv.near_duplicates), config.metric.tokenizer)
    if built[0] != wanted[0] or (wanted[0] != 0 and built[1] != wanted[1]):
        def setting(value, tokenizer):
            shown = '"auto"' if value == "auto" else f"{value:g}"
            return f"near_duplicates = {shown}" + (f" on {tokenizer} tokens" if value != 0 else "")
        said, now = setting(*built), setting(*wanted)
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
