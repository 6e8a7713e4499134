"""Ensembles that pick, per row, one member's output by local ROUGE: best, MBR, hill-climbing.

- ``best``: the member with the best OOF final.

Every "best" here is by [cv] objective: with "test_matched" (the default) rows weigh as in cv's
test-matched final (RunContext.objective_row_weights), so members that profit from close training
neighbours count as much as the test rewards them.
- ``mbr`` (minimum Bayes risk): per row, the output with the highest weighted mean ROUGE against
  the members' outputs. The mean runs over every member, the candidate's own output included
  (agreement 1), so weights act as a prior; with uniform weights this ranks exactly as the mean
  over the *other* members. Ties go to the earliest member.
- ``hill-climb``: greedy forward selection, with repetition as weights, of the member multiset
  whose MBR ensemble has the best OOF final.

Every choice is made without the rows it is scored on: for fold k the weights (or the best
member) come from the other folds only, and the OOF file holds those nested choices; the
optimistic score (weights chosen on all rows) is reported beside it. Test and dev outputs use the
weights chosen on all OOF rows.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.loading import references
from ..data.predictions import (list_sources, load_dev, load_fold_dev, load_fold_test, load_meta, load_oof, load_test,
                                write_fold, write_source_outputs)
from ..data.shift import weighted_mean
from ..errors import ConfigError, FoldMismatch, UnknownCandidate
from ..hashing import config_hash
from ..progress import progress as show_progress
from ..results.provenance import require_current, rerun_command, wildcard_members
from ..results.tracking import log_ensemble
from ..text.mbr import TIE, mbr_choose, pairwise_utilities
from ..text.metric import METRICS, RougeScorer, get_scorer
from ..workspace.config import Config, EnsembleConfig
from .fold_run import RunContext, prepare


def ensemble_final(utilities: np.ndarray, quality: np.ndarray, weights: Sequence[float],
                   row_weights: np.ndarray | None = None) -> float:
    """OOF final of the MBR ensemble with `weights`; quality is (rows, members) row finals, each
    row weighted by `row_weights` (None: all alike)."""
    chosen = mbr_choose(utilities, weights)
    return float(weighted_mean(quality[np.arange(len(chosen)), chosen], row_weights)) if len(chosen) else 0.0


def hill_climb(utilities: np.ndarray, quality: np.ndarray, max_members: int = 8,
               row_weights: np.ndarray | None = None) -> np.ndarray:
    """Pick counts per member: greedy forward selection with repetition maximising the MBR
    ensemble's mean row final; starts from the best single member, stops when no pick helps.

    When no single pick helps, pairs of picks are tried too: from one member, adding one other
    only makes two-way ties (which the earlier member wins), so MBR needs three voters to act.
    """
    members = quality.shape[1]
    counts = np.zeros(members)
    counts[int(np.argmax(weighted_mean(quality, row_weights)))] = 1
    current = ensemble_final(utilities, quality, counts, row_weights)
    steps = [(m,) for m in range(members)]
    pairs = [(a, b) for a in range(members) for b in range(a, members)]
    while counts.sum() < max_members:
        best_final, best_step = current, None
        for candidates in (steps, pairs):
            for step in candidates:
                if counts.sum() + len(step) > max_members:
                    continue
                trial = counts.copy()
                np.add.at(trial, list(step), 1)
                final = ensemble_final(utilities, quality, trial, row_weights)
                if final > best_final + TIE:
                    best_final, best_step = final, step
            if best_step is not None:
                break
        if best_step is None:
            break
        np.add.at(counts, list(best_step), 1)
        current = best_final
    return counts


def choose_weights(ensemble: EnsembleConfig, utilities: np.ndarray, quality: np.ndarray,
                   row_weights: np.ndarray | None = None) -> np.ndarray:
    """Member weights for `ensemble`'s method, chosen from these rows only (weighted by `row_weights`)."""
    members = quality.shape[1]
    if ensemble.method == "best":
        weights = np.zeros(members)
        weights[int(np.argmax(weighted_mean(quality, row_weights)))] = 1
        return weights
    if ensemble.method == "hill-climb":
        return hill_climb(utilities, quality, ensemble.max_members, row_weights)
    if ensemble.weights:
        return np.asarray(ensemble.weights, dtype=float)
    if ensemble.weights_from_oof:
        return np.maximum(weighted_mean(quality, row_weights), 1e-6)
    return np.ones(members)


def uses_objective(ensemble: EnsembleConfig) -> bool:
    """Whether the method chooses by a CV score (so [cv] objective changes its result)."""
    return ensemble.method in ("best", "hill-climb") or (ensemble.method == "mbr" and not ensemble.weights
                                                          and ensemble.weights_from_oof)


def nested_choice(ensemble: EnsembleConfig, utilities: np.ndarray, quality: np.ndarray,
                  folds: np.ndarray, row_weights: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per row the chosen member, each fold's rows chosen with weights picked on the other folds."""
    chosen = np.zeros(len(folds), dtype=int)
    fold_weights = {}
    for fold in sorted(set(folds.tolist())):
        held_out = folds == fold
        weights = choose_weights(ensemble, utilities[~held_out], quality[~held_out],
                                 None if row_weights is None else row_weights[~held_out])
        fold_weights[int(fold)] = weights
        chosen[held_out] = mbr_choose(utilities[held_out], weights)
    return chosen, fold_weights


def paired_bootstrap(differences: np.ndarray, resamples: int = 1000, seed: int = 42) -> list[float]:
    """95% interval of the mean of per-row differences, resampling rows ([None, None] for no resamples)."""
    if resamples < 1:
        return [None, None]
    if len(differences) == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    means = np.array([differences[rng.integers(0, len(differences), len(differences))].mean()
                      for _ in range(resamples)])
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def diagnostics(quality: np.ndarray, chosen: np.ndarray, names: Sequence[str], resamples: int = 1000,
                seed: int = 42) -> dict:
    """Oracle upper bound, how often each member is chosen, gain over the best single member."""
    rows = np.arange(len(chosen))
    member_finals = quality.mean(axis=0)
    best = int(np.argmax(member_finals))
    gain = quality[rows, chosen] - quality[:, best]
    counts = np.bincount(chosen, minlength=len(names))
    return {
        "oracle_final": float(quality.max(axis=1).mean()) if len(rows) else 0.0,
        "chosen": {name: int(count) for name, count in zip(names, counts)},
        "best_member": names[best],
        "best_member_final": float(member_finals[best]),
        "gain": float(gain.mean()) if len(rows) else 0.0,
        "gain_ci95": paired_bootstrap(gain, resamples, seed),
    }


# -- running an [ensembles.NAME] section on the files of its members ---------------------------
def resolve_members(config: Config, ensemble: EnsembleConfig, folds: Sequence[int] = ()) -> list[str]:
    """Member names: the listed sources, or with "*" every enabled candidate whose `folds` are all
    done (one skipped for lack of CUDA, or half run, is left out rather than failing the ensemble)."""
    sources = list_sources(config)
    if "*" in ensemble.members:
        names = wildcard_members(config, folds)  # provenance owns the rule: it decides when a built "*" is stale
        if not names:
            raise UnknownCandidate(f"ensemble {ensemble.name!r}: members = [\"*\"] but no candidate has "
                                   f"predictions for every fold under runs/: run `competition run` first")
        return names
    names = list(dict.fromkeys(ensemble.members))
    for name in names:
        if name == ensemble.name:
            raise ConfigError(f"[ensembles.{name}] lists itself as a member: remove it from members")
        if name not in sources:
            close = difflib.get_close_matches(name, sources, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownCandidate(f"ensemble {ensemble.name!r}: member {name!r} has no predictions under runs/"
                                   f"{hint}: run `{rerun_command(config, name)}` first")
    return names


def member_warnings(ensemble: EnsembleConfig, members: list[str]) -> list[str]:
    """What the resolved members make of the method: with two members every output agrees with
    the other as much as the other with it, so MBR has nothing to choose by."""
    if ensemble.method == "mbr" and len(members) == 2:
        return [f"ensemble {ensemble.name!r}: MBR over two members ({', '.join(members)}) cannot choose by agreement "
                f"(each output agrees with the other equally), so every row goes to the heavier-weighted member, the "
                f"first on equal weights: add a third member, or use method = \"best\" or \"hill-climb\""]
    return []


def _check(ensemble: EnsembleConfig, members: list[str]) -> None:
    """Settings that depend on the resolved members (method and utility are checked on loading)."""
    section = f"[ensembles.{ensemble.name}]"
    if ensemble.weights and len(ensemble.weights) != len(members):
        raise ConfigError(f"{section} has {len(ensemble.weights)} weights for {len(members)} members "
                          f"({', '.join(members)}): give one weight per member or none")
    if ensemble.weights and (min(ensemble.weights) < 0 or sum(ensemble.weights) <= 0):
        raise ConfigError(f"{section} weights should be non-negative and not all 0")
    if ensemble.max_members < 1:
        raise ConfigError(f"{section} max_members = {ensemble.max_members}: use 1 or more")


def _aligned(frame: pd.DataFrame, fnames: list[str], what: str) -> list[str]:
    """frame's summaries in `fnames` order; every fname must be there exactly once."""
    by_fname = frame.drop_duplicates("fname").set_index("fname")["summary"]
    missing = [f for f in fnames if f not in by_fname.index]
    if missing or len(frame) != len(fnames):
        raise FoldMismatch(f"{what} does not cover the expected {len(fnames)} rows "
                           f"(e.g. missing {', '.join(missing[:3]) or 'none'}, has {len(frame)}): rerun that member")
    return by_fname.loc[fnames].fillna("").astype(str).tolist()


def _choose_rows(outputs: list[list[str]], scorer: RougeScorer, utility: str, weights: np.ndarray,
                 workers: int | None) -> np.ndarray:
    """Per row the member chosen by MBR with fixed weights (test, dev)."""
    rows = len(outputs[0])
    if np.count_nonzero(weights) == 1:  # one voter: nothing to compare
        return np.full(rows, int(np.flatnonzero(weights)[0]))
    return mbr_choose(pairwise_utilities(outputs, scorer, utility, workers), weights)


def _combine(frames: list[pd.DataFrame | None], members: list[str], fnames: list[str], what: str,
             scorer: RougeScorer, utility: str, weights: np.ndarray,
             workers: int | None) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """The members' predictions of `fnames` (test or dev) combined by MBR with fixed weights:
    (fname,summary frame, chosen member per row), or (None, None) when a member has no such file."""
    if any(frame is None for frame in frames):
        return None, None
    outputs = [_aligned(frame, fnames, f"runs/{member} {what}") for member, frame in zip(members, frames)]
    chosen = _choose_rows(outputs, scorer, utility, weights, workers)
    summaries = [outputs[member][row] for row, member in enumerate(chosen)]
    return pd.DataFrame({"fname": fnames, "summary": summaries}), chosen


@dataclass
class EnsembleInputs:
    """The resolve step's answer: the section, its members (current, on the current folds) and their
    OOF outputs aligned to the labelled rows."""

    name: str
    ensemble: EnsembleConfig
    context: RunContext
    members: list[str]
    oof_outputs: list[list[str]]  # per member, its OOF summary of each labelled row
    scorer: RougeScorer
    row_weights: np.ndarray | None = None  # [cv] objective's weight of each labelled row (None: all alike)

    @property
    def fnames(self) -> list[str]:
        return self.context.rows["fname"].tolist()

    @property
    def fold_of(self) -> np.ndarray:
        return self.context.fold_of.astype(int)


@dataclass
class MemberScores:
    """The score step's answer: how good each member is on each row, and how alike they are."""

    f1: np.ndarray  # (rows, members, metrics) F1 against the references
    quality: np.ndarray  # (rows, members) row finals
    utilities: np.ndarray  # (rows, members, members) pairwise agreement (zeros for method "best")


@dataclass
class EnsembleChoice:
    """The choose step's answer: nested per-row choices (fold k chosen on the other folds), the
    weights chosen on all rows for test and dev, and the diagnostics of the nested choice."""

    chosen: np.ndarray  # per row, the member whose OOF output the ensemble takes
    fold_weights: dict[int, np.ndarray]
    all_weights: np.ndarray
    optimistic_final: float  # the OOF final with the weights chosen on all rows
    diagnostics: dict


def run_ensemble(config: Config, name: str, workers: int | None = None, progress: bool = False) -> dict:
    """Build ensemble `name` from its members' files, write runs/NAME/ like a candidate, report."""
    inputs = resolve_ensemble(config, name)
    scores = score_members(inputs, workers, progress)
    choice = choose_members(inputs, scores)
    test_chosen, dev_final = write_ensemble(inputs, choice, workers, progress)
    log_ensemble(config, name)
    return ensemble_report(inputs, scores, choice, test_chosen, dev_final)


def resolve_ensemble(config: Config, name: str) -> EnsembleInputs:
    """The [ensembles.NAME] section, its members and their OOF outputs; refuses an unknown name, bad
    settings, a member that is not current or was run on other folds."""
    if name not in config.ensembles:
        close = difflib.get_close_matches(name, list(config.ensembles), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownCandidate(f"no ensemble {name!r} in {config.path or 'competition.toml'}{hint}: "
                               f"add an [ensembles.{name}] section")
    ensemble = config.ensembles[name]
    context = prepare(config)  # the rows, folds, test and dev the runner predicts, and their hashes
    fnames = context.rows["fname"].tolist()
    fold_of = context.fold_of.astype(int)
    members = resolve_members(config, ensemble, sorted(set(fold_of.tolist())))
    _check(ensemble, members)
    scorer = get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)
    oof_outputs = []
    for member in members:
        require_current(config, member, context.hashes, context.k, role="member")
        oof = load_oof(config, member)
        member_folds = oof.drop_duplicates("fname").set_index("fname")["fold"]
        if set(member_folds.index) != set(fnames) or (member_folds.loc[fnames].astype(int).to_numpy() != fold_of).any():
            raise FoldMismatch(f"member {member!r} was run with other folds than {config.cv.folds_file}: "
                               f"rerun it with `{rerun_command(config, member)}`")
        oof_outputs.append(_aligned(oof, fnames, f"runs/{member} OOF"))
    row_weights = None
    if uses_objective(ensemble) and context.objective_row_weights is not None:
        row_weights = context.objective_row_weights.to_numpy()  # in the order of context.rows, like fnames
    return EnsembleInputs(name, ensemble, context, members, oof_outputs, scorer, row_weights)


def score_members(inputs: EnsembleInputs, workers: int | None = None, progress: bool = False) -> MemberScores:
    """Each member's F1 per row against the references and, unless the method only picks the best
    member, the members' pairwise agreement per row (MBR's utilities)."""
    refs = references(inputs.context.rows)
    member_scores = [inputs.scorer.score(outputs, refs).per_row[:, :, 2] for outputs in
                     show_progress(inputs.oof_outputs, desc="score members", unit="members", enabled=progress)]
    f1 = np.stack(member_scores, axis=1)
    members = len(inputs.members)
    if inputs.ensemble.method == "best":
        utilities = np.zeros((len(inputs.fnames), members, members))
    else:
        utilities = pairwise_utilities(inputs.oof_outputs, inputs.scorer, inputs.ensemble.utility, workers, progress)
    return MemberScores(f1, f1.mean(axis=2) * 100, utilities)


def choose_members(inputs: EnsembleInputs, scores: MemberScores) -> EnsembleChoice:
    """Weights per held-out fold (chosen on the other folds) and on all rows, the nested per-row
    choice, its optimistic counterpart and diagnostics."""
    ensemble, config = inputs.ensemble, inputs.context.config
    chosen, fold_weights = nested_choice(ensemble, scores.utilities, scores.quality, inputs.fold_of, inputs.row_weights)
    all_weights = choose_weights(ensemble, scores.utilities, scores.quality, inputs.row_weights)
    rows = np.arange(len(chosen))
    optimistic = float(scores.quality[rows, mbr_choose(scores.utilities, all_weights)].mean())
    return EnsembleChoice(chosen, fold_weights, all_weights, optimistic,
                          diagnostics(scores.quality, chosen, inputs.members, config.cv.bootstrap, config.cv.seed))


def write_ensemble(inputs: EnsembleInputs, choice: EnsembleChoice, workers: int | None = None,
                   progress: bool = False) -> tuple[dict[str, int], float | None]:
    """Write runs/NAME/ like a candidate: per fold the nested OOF choice and the test (dev) outputs
    combined with that fold's weights, then test and dev combined with the all-rows weights.
    Returns the test rows each member supplied and the dev final (None without dev)."""
    ensemble, context, members, scorer = inputs.ensemble, inputs.context, inputs.members, inputs.scorer
    config, name, fnames, fold_of = context.config, inputs.name, inputs.fnames, inputs.fold_of
    settings = {**asdict(ensemble), "members": members}
    if uses_objective(ensemble) and config.cv.objective != "oof":  # "oof" keeps the hashes made before objectives
        settings["objective"] = config.cv.objective
    meta = {"name": name, "kind": "ensemble", "method": ensemble.method, "utility": ensemble.utility,
            "members": members, "member_hashes": {member: (load_meta(config, member) or {}).get("config_hash")
                                                  for member in members},
            "config_hash": config_hash(settings), "config": settings, **context.hashes}
    test_fnames = context.test["fname"].tolist()
    dev_fnames = context.dev["fname"].tolist() if context.dev is not None else None
    fold_tests = [load_fold_test(config, member) for member in members]
    fold_devs = [load_fold_dev(config, member) for member in members]
    for fold in show_progress(sorted(choice.fold_weights), desc="write folds", unit="folds", enabled=progress):
        weights = choice.fold_weights[fold]
        held_out = np.flatnonzero(fold_of == fold)
        oof_frame = pd.DataFrame({"fname": [fnames[i] for i in held_out],
                                  "summary": [inputs.oof_outputs[choice.chosen[i]][i] for i in held_out]})
        test_frame, _ = _combine([tests.get(fold) for tests in fold_tests], members, test_fnames,
                                 f"fold {fold} test", scorer, ensemble.utility, weights, workers)
        dev_frame = None
        if dev_fnames is not None:
            dev_frame, _ = _combine([devs.get(fold) for devs in fold_devs], members, dev_fnames,
                                    f"fold {fold} dev", scorer, ensemble.utility, weights, workers)
        write_fold(config, name, fold, oof_frame, test_frame, dev_frame,
                   {**meta, "fold": fold, "weights": dict(zip(members, weights.tolist()))})

    test_frame, test_choice = _combine([load_test(config, m) for m in members], members, test_fnames, "test.csv",
                                       scorer, ensemble.utility, choice.all_weights, workers)
    dev_frame, dev_final = None, None
    if dev_fnames is not None:
        dev_frame, _ = _combine([load_dev(config, m) for m in members], members, dev_fnames, "dev.csv",
                                scorer, ensemble.utility, choice.all_weights, workers)
        if dev_frame is not None:
            dev_final = scorer.score(dev_frame["summary"].tolist(), references(context.dev)).final
    write_source_outputs(config, name, test_frame, dev_frame,
                         {**meta, "weights": dict(zip(members, choice.all_weights.tolist()))})
    return dict(zip(members, np.bincount(test_choice, minlength=len(members)).tolist())), dev_final


def ensemble_report(inputs: EnsembleInputs, scores: MemberScores, choice: EnsembleChoice,
                    test_chosen: dict[str, int], dev_final: float | None) -> dict:
    """What `competition ensemble --json` prints."""
    members, ensemble = inputs.members, inputs.ensemble
    chosen_f1 = scores.f1[np.arange(len(choice.chosen)), choice.chosen].mean(axis=0)
    return {
        "name": inputs.name,
        "method": ensemble.method,
        "utility": ensemble.utility,
        "members": members,
        "member_finals": dict(zip(members, scores.quality.mean(axis=0).tolist())),
        "weights": dict(zip(members, choice.all_weights.tolist())),
        "fold_weights": {fold: dict(zip(members, w.tolist())) for fold, w in choice.fold_weights.items()},
        "oof": {**dict(zip(METRICS, chosen_f1.tolist())), "final": float(chosen_f1.mean() * 100)},
        "oof_final": float(chosen_f1.mean() * 100),
        "optimistic_final": choice.optimistic_final,
        "dev_final": dev_final,
        "diagnostics": choice.diagnostics,
        "test_chosen": test_chosen,
        "warnings": member_warnings(ensemble, members),
    }
