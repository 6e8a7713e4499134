"""Minimum Bayes risk selection: per row, the output that agrees most (by ROUGE) with the others.

One implementation serves every per-row choice among several outputs: a candidate's test output
from its k fold models, retrieval's consensus of the k nearest summaries, and ensembles of
members (ensemble.py). Every distinct output is tokenised once (the scorer's cache) and pairs are
scored over a forked process pool when there are many.

ROUGE F1 of R-1/R-2 is symmetric, and so is rouge-score's ROUGE-L; the official (rouge 1.0.1)
ROUGE-L is not quite (its LCS reconstruction breaks ties by direction), so under the official
convention both directions are scored and each output is scored as the hypothesis.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..progress import progress as show_progress
from .metric import METRICS, RougeScorer

UTILITIES = ("final",) + METRICS
# Below this many pairs a process pool costs more than it saves.
_POOL_MIN_PAIRS = 40_000
TIE = 1e-12

# Set before forking a pool: workers read these instead of unpickling the pair lists.
_pool_state: dict = {}


def _utility_of(scores: np.ndarray, utility: str) -> np.ndarray:
    """One number per pair from score_pairs' (pairs, 3, 3): mean F1 or one metric's F1."""
    if utility == "final":
        return scores[:, :, 2].mean(axis=1)
    return scores[:, METRICS.index(utility), 2]


def _score_range(bounds: tuple[int, int]) -> np.ndarray:
    start, stop = bounds
    state = _pool_state
    scores = state["scorer"].score_pairs(state["hyps"][start:stop], state["refs"][start:stop])
    return _utility_of(scores, state["utility"])


def _pair_utilities(scorer: RougeScorer, hyps: list[str], refs: list[str], utility: str,
                    workers: int, progress: bool = False) -> np.ndarray:
    """Utility of hyps[i] against refs[i], over a forked pool when there are many pairs."""
    scorer.prepare(hyps + refs)  # tokenise in the parent, once: workers inherit the cache
    parallel = workers > 1 and len(hyps) >= _POOL_MIN_PAIRS
    step = max(1, -(-len(hyps) // (workers * 8 if parallel else 20)))
    chunks = [(start, min(start + step, len(hyps))) for start in range(0, len(hyps), step)]
    bar = dict(total=len(hyps), desc="mbr pairs", unit="pairs", enabled=progress)
    _pool_state.update(scorer=scorer, hyps=hyps, refs=refs, utility=utility)
    try:
        scored = []
        with show_progress(**bar) as reporter:
            if not parallel:
                for chunk in chunks:
                    scored.append(_score_range(chunk))
                    reporter.update(chunk[1] - chunk[0])
            else:

                with multiprocessing.get_context("fork").Pool(workers) as pool:
                    for chunk, part in zip(chunks, pool.imap(_score_range, chunks)):
                        scored.append(part)
                        reporter.update(chunk[1] - chunk[0])
        return np.concatenate(scored)
    finally:
        _pool_state.clear()


def default_workers() -> int:
    """Processes for pair scoring: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def pairwise_utilities(outputs: Sequence[Sequence[str]], scorer: RougeScorer, utility: str = "final",
                       workers: int | None = None, progress: bool = False) -> np.ndarray:
    """Array (rows, members, members): utility of member i's output with member j's as reference.

    Each distinct output of a row is scored once against each other distinct output; identical
    non-empty outputs agree fully (1.0), an empty output agrees with nothing (0.0).
    """
    if utility not in UTILITIES:
        raise ConfigError(f"unknown MBR utility {utility!r}: choose one of {', '.join(UTILITIES)}")
    members = len(outputs)
    rows = len(outputs[0]) if members else 0
    if any(len(member) != rows for member in outputs):
        raise ValueError("every member needs one output per row")
    both_directions = scorer.convention == "official"
    hyps: list[str] = []
    refs: list[str] = []
    layouts = []  # per row: (distinct index of each member, distinct texts, first pair position)
    for row in range(rows):
        texts = [outputs[m][row] for m in range(members)]
        distinct = list(dict.fromkeys(texts))
        index_of = {text: i for i, text in enumerate(distinct)}
        layouts.append(([index_of[t] for t in texts], distinct, len(hyps)))
        for a in range(len(distinct)):
            for b in range(a + 1, len(distinct)):
                if distinct[a] and distinct[b]:
                    hyps.append(distinct[a])
                    refs.append(distinct[b])
                    if both_directions:
                        hyps.append(distinct[b])
                        refs.append(distinct[a])
    values = (_pair_utilities(scorer, hyps, refs, utility, workers or default_workers(), progress)
              if hyps else np.zeros(0))
    result = np.zeros((rows, members, members))
    for row, (member_index, distinct, position) in enumerate(layouts):
        size = len(distinct)
        agreement = np.diag([1.0 if text else 0.0 for text in distinct])
        for a in range(size):
            for b in range(a + 1, size):
                if distinct[a] and distinct[b]:
                    agreement[a, b] = values[position]
                    agreement[b, a] = values[position + 1] if both_directions else values[position]
                    position += 2 if both_directions else 1
        result[row] = agreement[np.ix_(member_index, member_index)]
    return result


def mbr_choose(utilities: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Per row, the member (index) whose output has the highest weighted mean utility.

    The mean includes the candidate's own output (utility 1 with itself). With uniform weights
    that term is the same for every non-empty output, so the choice equals the mean over the
    *other* members' outputs (except that an empty output never wins a tie); with weights it is
    what makes them a prior: a member's weight also counts for its own output, so a heavy member
    can win a row that no other member agrees with. Members with weight 0 neither vote nor can be
    chosen; ties go to the earliest member.
    """
    rows, members, _ = utilities.shape
    weights = np.ones(members) if weights is None else np.asarray(weights, dtype=float)
    if len(weights) != members or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"MBR weights {list(weights)} should be {members} non-negative numbers, not all 0")
    expected = utilities @ (weights / weights.sum())
    expected[:, weights == 0] = -np.inf
    best = expected.max(axis=1, keepdims=True)
    return np.argmax(expected >= best - TIE, axis=1)


def mbr_select(outputs: Sequence[Sequence[str]], scorer: RougeScorer, weights: Sequence[float] | None = None,
               utility: str = "final", workers: int | None = None) -> np.ndarray:
    """Per row, the index of the member output chosen by MBR (see `mbr_choose`)."""
    return mbr_choose(pairwise_utilities(outputs, scorer, utility, workers), weights)
