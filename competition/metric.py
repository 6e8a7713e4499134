"""ROUGE-1/2/L on Korean morphemes, the competition's number: mean of the three F1 x 100.

Two conventions:
- ``official``: what the organisers run, the ``rouge`` 1.0.1 package (pltrdy) on morpheme tokens
  joined by spaces: text split into sentences on ".", each distinct n-gram counted once,
  ROUGE-L as summary-level union LCS, F = 2PR / (P + R + 1e-8).
- ``rouge-score``: Google's rouge-score semantics (n-gram counts, one LCS over the whole text).

Each distinct text is tokenized once (Kiwi's batch API) and kept in the scorer's cache, so
re-scoring the same outputs (CV, ensembles, decoding search) costs only the counting.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rapidfuzz.distance import LCSseq

from .errors import ConfigError
from .tokenizers import Tokenizer, get_tokenizer

METRICS = ("rouge1", "rouge2", "rougeL")
STATS = ("precision", "recall", "f1")
CONVENTIONS = ("official", "rouge-score")
MULTI_REF_RULES = ("mean", "max")
# Sentence pairs whose LCS words are remembered (MBR and CV compare the same outputs again).
_LCS_CACHE_LIMIT = 1_000_000


@dataclass
class RougeResult:
    """Per-row scores, shape (rows, 3 metrics, 3 stats: precision, recall, f1)."""

    per_row: np.ndarray

    @property
    def f1(self) -> dict[str, float]:
        """Corpus F1 per metric: the mean over rows."""
        if len(self.per_row) == 0:
            return {metric: 0.0 for metric in METRICS}
        means = self.per_row[:, :, 2].mean(axis=0)
        return {metric: float(value) for metric, value in zip(METRICS, means)}

    @property
    def final(self) -> float:
        """The leaderboard number: mean of ROUGE-1/2/L F1 x 100."""
        return float(np.mean(list(self.f1.values())) * 100)

    @property
    def row_finals(self) -> np.ndarray:
        """Each row's final (mean of its three F1 x 100)."""
        return self.per_row[:, :, 2].mean(axis=1) * 100

    def as_dict(self) -> dict:
        """Corpus precision, recall, F1 per metric and the final, for --json."""
        means = self.per_row.mean(axis=0) if len(self.per_row) else np.zeros((3, 3))
        out: dict = {"rows": int(len(self.per_row))}
        for m, metric in enumerate(METRICS):
            out[metric] = {stat: float(means[m, s]) for s, stat in enumerate(STATS)}
        out["final"] = self.final
        return out


class _OfficialText:
    """A text as rouge 1.0.1 sees it: sentences of word ids, distinct uni- and bigrams."""

    __slots__ = ("sentences", "unigrams", "bigrams")

    def __init__(self, sentences: list[tuple[int, ...]]):
        self.sentences = sentences
        words = [w for sentence in sentences for w in sentence]
        self.unigrams = frozenset(words)
        # rouge 1.0.1 flattens the sentences before taking n-grams, so bigrams cross sentence ends.
        self.bigrams = frozenset((a << 32) | b for a, b in zip(words, words[1:]))


class _CountedText:
    """A text as rouge-score sees it: one token list, n-gram counts."""

    __slots__ = ("ids", "unigrams", "bigrams")

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.unigrams = Counter(ids)
        self.bigrams = Counter((a << 32) | b for a, b in zip(ids, ids[1:]))


def _official_f(overlap: int, hyp_count: int, ref_count: int) -> tuple[float, float, float]:
    precision = overlap / hyp_count if hyp_count else 0.0
    recall = overlap / ref_count if ref_count else 0.0
    return precision, recall, 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _lcs_words(ref: tuple[int, ...], hyp: tuple[int, ...]) -> set[int]:
    """Words of the LCS that rouge 1.0.1's ``_recon_lcs`` reconstructs (same tie-break)."""
    common = set(ref).intersection(hyp)
    if not common:
        return set()
    m = len(hyp)
    table = [[0] * (m + 1)]
    for word in ref:
        previous = table[-1]
        current = [0] * (m + 1)
        left = 0
        for j in range(1, m + 1):
            if word == hyp[j - 1]:
                left = previous[j - 1] + 1
            else:
                up = previous[j]
                if up > left:
                    left = up
            current[j] = left
        table.append(current)
    words: set[int] = set()
    i, j = len(ref), m
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i -= 1
            j -= 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


class RougeScorer:
    """Scores predictions against references with a token cache shared by every call."""

    def __init__(self, tokenizer: str | Tokenizer = "kiwi", convention: str = "official",
                 multi_ref: str = "mean"):
        if convention not in CONVENTIONS:
            raise ConfigError(f"unknown ROUGE convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
        if multi_ref not in MULTI_REF_RULES:
            raise ConfigError(f"unknown multi-reference rule {multi_ref!r}: choose 'mean' or 'max'")
        self.tokenizer = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.convention = convention
        self.multi_ref = multi_ref
        self._vocabulary: dict[str, int] = {}
        self._prepared: dict[str, _OfficialText | _CountedText] = {}
        self._lcs_cache: dict[tuple, set[int]] = {}

    # -- tokens ---------------------------------------------------------------------------
    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of each text (uncached; for reports such as length statistics)."""
        return self.tokenizer.tokenize_many(list(texts))

    def _ids(self, words: list[str]) -> tuple[int, ...]:
        vocabulary = self._vocabulary
        return tuple(vocabulary.setdefault(word, len(vocabulary)) for word in words)

    def prepare(self, texts: Sequence[str]) -> None:
        """Tokenize, in one batch, every text not yet in the cache."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._prepared))
        if not missing:
            return
        for text, tokens in zip(missing, self.tokenizer.tokenize_many(missing)):
            if self.convention == "official":
                # Exactly what rouge 1.0.1 does to "tok tok tok": split on ".", fold spaces.
                joined = " ".join(tokens)
                sentences = [" ".join(part.split()) for part in joined.split(".") if len(part) > 0]
                self._prepared[text] = _OfficialText([self._ids(s.split(" ")) for s in sentences])
            else:
                self._prepared[text] = _CountedText(list(self._ids(tokens)))

    # -- pairs ----------------------------------------------------------------------------
    def _official_pair(self, hyp: _OfficialText, ref: _OfficialText) -> list[tuple[float, float, float]]:
        if not hyp.sentences or not ref.sentences:
            return [(0.0, 0.0, 0.0)] * 3
        r1 = _official_f(len(hyp.unigrams & ref.unigrams), len(hyp.unigrams), len(ref.unigrams))
        r2 = _official_f(len(hyp.bigrams & ref.bigrams), len(hyp.bigrams), len(ref.bigrams))
        union: set[int] = set()
        if hyp.unigrams & ref.unigrams:
            cache = self._lcs_cache
            for ref_sentence in ref.sentences:
                for hyp_sentence in hyp.sentences:
                    key = (ref_sentence, hyp_sentence)
                    words = cache.get(key)
                    if words is None:
                        if len(cache) > _LCS_CACHE_LIMIT:
                            cache.clear()
                        words = cache[key] = _lcs_words(ref_sentence, hyp_sentence)
                    union |= words
        llcs = len(union)
        recall = llcs / len(ref.unigrams)
        precision = llcs / len(hyp.unigrams)
        rl = (precision, recall, 2.0 * ((precision * recall) / (precision + recall + 1e-8)))
        return [r1, r2, rl]

    @staticmethod
    def _counted_pair(hyp: _CountedText, ref: _CountedText) -> list[tuple[float, float, float]]:
        def prf(overlap: int, hyp_total: int, ref_total: int) -> tuple[float, float, float]:
            precision = overlap / max(hyp_total, 1)
            recall = overlap / max(ref_total, 1)
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
            return precision, recall, f1

        n_hyp, n_ref = len(hyp.ids), len(ref.ids)
        r1 = prf(sum((hyp.unigrams & ref.unigrams).values()), n_hyp, n_ref)
        r2 = prf(sum((hyp.bigrams & ref.bigrams).values()), max(n_hyp - 1, 0), max(n_ref - 1, 0))
        if n_hyp == 0 or n_ref == 0:
            rl = (0.0, 0.0, 0.0)
        else:
            lcs = LCSseq.similarity(hyp.ids, ref.ids)
            rl = prf(lcs, n_hyp, n_ref)
        return [r1, r2, rl]

    def score_pairs(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """Scores of hyps[i] against refs[i]: array (pairs, 3 metrics, 3 stats)."""
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
        self.prepare(list(hyps) + list(refs))
        prepared = self._prepared
        pair = self._official_pair if self.convention == "official" else self._counted_pair
        out = np.zeros((len(hyps), 3, 3))
        for row, (hyp, ref) in enumerate(zip(hyps, refs)):
            out[row] = pair(prepared[hyp], prepared[ref])
        return out

    # -- rows -----------------------------------------------------------------------------
    def score(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> RougeResult:
        """Score each prediction against its reference(s); several are combined by ``multi_ref``."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference rows")
        ref_lists = [[r] if isinstance(r, str) else [x for x in r if x] for r in references]
        hyps = [p for p, refs in zip(predictions, ref_lists) for _ in refs]
        flat_refs = [r for refs in ref_lists for r in refs]
        pair_scores = self.score_pairs(hyps, flat_refs)
        per_row = np.zeros((len(predictions), 3, 3))
        start = 0
        for row, refs in enumerate(ref_lists):
            block = pair_scores[start:start + len(refs)]
            start += len(refs)
            if len(block) == 0:
                continue
            if self.multi_ref == "mean":
                # The competition scores a prediction against each reference and averages.
                per_row[row] = block.mean(axis=0)
            else:
                best = block[:, :, 2].argmax(axis=0)
                per_row[row] = block[best, np.arange(3)]
        return RougeResult(per_row)


_scorers: dict[tuple[str, str, str], RougeScorer] = {}


def get_scorer(tokenizer: str = "kiwi", convention: str = "official", multi_ref: str = "mean") -> RougeScorer:
    """A process-wide scorer per setting, so its token cache is shared by every stage."""
    key = (tokenizer, convention, multi_ref)
    if key not in _scorers:
        _scorers[key] = RougeScorer(tokenizer, convention, multi_ref)
    return _scorers[key]


def score(predictions: Sequence[str], references: Sequence[str | Sequence[str]], tokenizer: str = "kiwi",
          convention: str = "official", multi_ref: str = "mean") -> RougeResult:
    """Score predictions against references (one string or a list of up to N per row)."""
    return get_scorer(tokenizer, convention, multi_ref).score(predictions, references)
