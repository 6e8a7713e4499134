"""ROUGE-1/2/L on Korean morphemes, the competition's number: mean of the three F1 x 100.

Two conventions:
- ``official``: what the organisers run, the ``rouge`` 1.0.1 package (pltrdy) on morpheme tokens
  joined by spaces: text split into sentences on ".", each distinct n-gram counted once,
  ROUGE-L as summary-level union LCS, F = 2PR / (P + R + 1e-8).
- ``rouge-score``: Google's rouge-score semantics (n-gram counts, one LCS over the whole text).

Each distinct text is tokenized once (Kiwi's batch API; tokens of earlier commands come from the
persistent token cache, token_cache.py) and kept in the scorer's tables, so re-scoring the same
outputs (CV, ensembles, decoding search) costs only the counting: n-gram overlaps of all pairs
at once in numpy, ROUGE-L by rapidfuzz (rouge-score) or a bit-parallel LCS that keeps rouge
1.0.1's tie-break (official). bench/metric.py measures it against the packages. In a workspace,
the scores of each list of pairs are kept too (token_cache.py, keyed by the texts, the convention,
the tokens' identity and this module's code), so the next command's CV and MBR read them back.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import numpy as np
from rapidfuzz.distance import LCSseq
from rapidfuzz.process import cpdist

from . import token_cache
from ..choices import CONVENTIONS, MULTI_REF_RULES, listed
from ..errors import ConfigError, raise_if_invalid
from .tokenizers import TOKENIZERS, Tokenizer, get_tokenizer, tokenize

METRICS = ("rouge1", "rouge2", "rougeL")
STATS = ("precision", "recall", "f1")
# Sentence pairs whose LCS words are remembered (MBR and CV compare the same outputs again).
_LCS_CACHE_LIMIT = 1_000_000
# Scores in the persistent cache: per pair 3 metrics x (P, R, F1) as little-endian float64.
_STORED_FLOAT = np.dtype("<f8")
_PAIR_BYTES = 9 * _STORED_FLOAT.itemsize
# Fewer pairs are counted faster than a lookup and a write.
_STORE_MIN_PAIRS = 50


@dataclass
class MetricConfig:
    tokenizer: str = "kiwi"  # kiwi (Korean morphemes), whitespace or english
    convention: str = "official"  # official (rouge 1.0.1, as the organisers) or rouge-score
    multi_ref: str = "mean"  # mean over references (the competition's rule) or max
    cache_mb: int = 1024  # token cache runs/.cache/tokens.sqlite, least recently used evicted; 0 = off

    def __post_init__(self) -> None:
        problems = []
        if self.tokenizer not in TOKENIZERS:
            problems.append(f"tokenizer = {self.tokenizer!r}: choose {listed(sorted(TOKENIZERS))}")
        if self.convention not in CONVENTIONS:
            problems.append(f"convention = {self.convention!r}: choose {listed(CONVENTIONS)}")
        if self.multi_ref not in MULTI_REF_RULES:
            problems.append(f"multi_ref = {self.multi_ref!r}: choose {listed(MULTI_REF_RULES)}")
        if not isinstance(self.cache_mb, int) or isinstance(self.cache_mb, bool) or self.cache_mb < 0:
            problems.append(f"cache_mb = {self.cache_mb!r}: choose a size in MB (e.g. 1024), or 0 for no token cache")
        raise_if_invalid(problems)

    def scoring(self) -> dict:
        """The settings scores depend on (cache_mb only changes speed): what results are hashed with."""
        return {"tokenizer": self.tokenizer, "convention": self.convention, "multi_ref": self.multi_ref}


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


def _hyp_masks(hyp: tuple[int, ...]) -> dict[int, int]:
    """For each word of a hypothesis sentence, the bit mask of its positions."""
    masks: dict[int, int] = {}
    for position, word in enumerate(hyp):
        masks[word] = masks.get(word, 0) | (1 << position)
    return masks


def _lcs_words(ref: tuple[int, ...], hyp: tuple[int, ...], masks: dict[int, int] | None = None,
               shared: int = -1) -> set[int]:
    """Words of the LCS that rouge 1.0.1's ``_recon_lcs`` reconstructs (same tie-break).

    The DP table's rows are kept as bit vectors (Hyyro's bit-parallel LCS: bit j of row i is 0
    where T[i][j+1] = T[i][j] + 1), so a row costs a few integer operations instead of len(hyp).
    Walking back, rouge moves up when T[i-1][j] > T[i][j-1]; on a mismatch that holds exactly
    when row i steps up at column j, i.e. when bit j-1 of row i is 0. The walk stops early once
    it has found `shared` words (the number of words the two sentences share: there are no more).
    """
    if masks is None:
        masks = _hyp_masks(hyp)
    get = masks.get
    full = (1 << len(hyp)) - 1
    row = full
    rows = [row]
    for word in ref:
        matched = row & get(word, 0)
        row = ((row + matched) | (row - matched)) & full
        rows.append(row)
    words: set[int] = set()
    i, j = len(ref), len(hyp)
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            if len(words) == shared:
                break
            i -= 1
            j -= 1
        elif not (rows[i] >> (j - 1)) & 1:
            i -= 1
        else:
            j -= 1
    return words


class _NgramTable:
    """Distinct n-gram ids of every prepared text with their counts, in flat arrays (CSR).

    Overlaps of many pairs are then a few vectorised numpy operations instead of a set or Counter
    intersection per pair.
    """

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)

    def add(self, texts_ids: list[list[int]]) -> None:
        """Append texts (each a list of n-gram ids) in text-index order."""
        lengths = np.fromiter((len(ids) for ids in texts_ids), dtype=np.int64, count=len(texts_ids))
        flat = np.fromiter((i for ids in texts_ids for i in ids), dtype=np.int64, count=int(lengths.sum()))
        text = np.repeat(np.arange(len(texts_ids), dtype=np.int64), lengths)
        keys, counts = np.unique((text << 32) | flat, return_counts=True)
        distinct = np.bincount(keys >> 32, minlength=len(texts_ids))
        self.ids = np.concatenate([self.ids, keys & 0xFFFFFFFF])
        self.counts = np.concatenate([self.counts, counts])
        self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(distinct)])

    def distinct(self, texts: np.ndarray) -> np.ndarray:
        return self.offsets[texts + 1] - self.offsets[texts]

    def _gather(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted keys pair << 32 | id, and counts, of the n-grams of texts[pair] for each pair."""
        starts = self.offsets[texts]
        lengths = self.offsets[texts + 1] - starts
        pair = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        positions = np.arange(int(lengths.sum()), dtype=np.int64) + shift
        return (pair << 32) | self.ids[positions], self.counts[positions]

    def overlap(self, hyp_texts: np.ndarray, ref_texts: np.ndarray, counted: bool) -> np.ndarray:
        """Per pair: distinct shared n-grams, or (counted) the sum of min(count in hyp, in ref)."""
        hyp_keys, hyp_counts = self._gather(hyp_texts)
        ref_keys, ref_counts = self._gather(ref_texts)
        if not len(hyp_keys) or not len(ref_keys):
            return np.zeros(len(hyp_texts))
        where = np.minimum(np.searchsorted(ref_keys, hyp_keys), len(ref_keys) - 1)
        hit = ref_keys[where] == hyp_keys
        weights = np.minimum(hyp_counts[hit], ref_counts[where[hit]]) if counted else None
        return np.bincount(hyp_keys[hit] >> 32, weights=weights, minlength=len(hyp_texts)).astype(float)


def _lcs_string(ids: list[int]) -> str | None:
    """Token ids as one character each, so rapidfuzz's LCS runs on str (its fastest input)."""
    # Skip the surrogate block; beyond 0x10FFFF fall back to id lists.
    points = [i if i < 0xD800 else i + 0x800 for i in ids]
    if points and max(points) > 0x10FFFF:
        return None
    return "".join(map(chr, points))


def _sentence(ids: tuple[int, ...]) -> list:
    """An official-convention sentence: ids, distinct words, words seen twice or more, LCS text,
    and a slot for its position masks (filled when first needed as a hypothesis)."""
    seen: set[int] = set()
    repeated = {i for i in ids if i in seen or seen.add(i)}
    return [ids, frozenset(seen), frozenset(repeated), _lcs_string(list(ids)), None]


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
        self._bigram_vocabulary: dict[int, int] = {}
        self._index: dict[str, int] = {}  # text -> its row in the tables below
        self._unigrams = _NgramTable()
        self._bigrams = _NgramTable()
        self._token_counts: list[int] = []  # rouge-score: tokens per text
        self._sentences: list[list[list]] = []  # official: each text's _sentence()s
        self._unigram_sets: list[frozenset[int]] = []  # official: distinct words per text
        self._lcs_strings: list[str | list[int]] = []  # rouge-score: the text for rapidfuzz
        self._lcs_cache: dict[tuple, set[int]] = {}

    # -- tokens ---------------------------------------------------------------------------
    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of each text (for reports such as length statistics)."""
        return tokenize(list(texts), self.tokenizer)

    def prepare(self, texts: Sequence[str]) -> None:
        """Tokenize, in one batch, every text not yet in the tables (the persistent token cache
        answers the texts earlier commands tokenised)."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._index))
        if not missing:
            return
        vocabulary, bigram_vocabulary = self._vocabulary, self._bigram_vocabulary
        unigram_rows, bigram_rows = [], []
        for text, tokens in zip(missing, tokenize(missing, self.tokenizer)):
            if self.convention == "official":
                # Exactly what rouge 1.0.1 does to "tok tok tok": split on ".", fold spaces; an
                # all-space piece stays as the one-word sentence "".
                joined = " ".join(tokens)
                sentences = [" ".join(part.split()).split(" ") for part in joined.split(".") if len(part) > 0]
                ids_per_sentence = [tuple(vocabulary.setdefault(w, len(vocabulary)) for w in s) for s in sentences]
                self._sentences.append([_sentence(ids) for ids in ids_per_sentence])
                # rouge 1.0.1 flattens the sentences before taking n-grams: bigrams cross sentence ends.
                ids = [i for sentence in ids_per_sentence for i in sentence]
                self._unigram_sets.append(frozenset(ids))
            else:
                ids = [vocabulary.setdefault(w, len(vocabulary)) for w in tokens]
                self._token_counts.append(len(ids))
                lcs_text = _lcs_string(ids)
                self._lcs_strings.append(ids if lcs_text is None else lcs_text)
            unigram_rows.append(ids)
            bigram_rows.append([bigram_vocabulary.setdefault((a << 32) | b, len(bigram_vocabulary))
                                for a, b in zip(ids, ids[1:])])
            self._index[text] = len(self._index)
        self._unigrams.add(unigram_rows)
        self._bigrams.add(bigram_rows)

    # -- pairs ----------------------------------------------------------------------------
    def _union_lcs(self, hyp: int, ref: int) -> int:
        """rouge 1.0.1's summary-level ROUGE-L overlap: the union over reference sentences of the
        LCS words with each hypothesis sentence."""
        common = self._unigram_sets[hyp] & self._unigram_sets[ref]
        if not common:
            return 0
        union: set[int] = set()
        cache = self._lcs_cache
        hyp_sentences = self._sentences[hyp]
        for ref_sentence, ref_words, ref_repeated, ref_string, _ in self._sentences[ref]:
            for hyp_record in hyp_sentences:
                hyp_sentence, hyp_words, hyp_repeated, hyp_string, masks = hyp_record
                shared = ref_words & hyp_words
                # LCS words are among the shared words: nothing new when those are already in.
                if not shared or shared <= union:
                    continue
                if len(shared) == 1:
                    union |= shared
                elif (ref_string is not None and hyp_string is not None
                      and (shared.isdisjoint(ref_repeated) or shared.isdisjoint(hyp_repeated))
                      and LCSseq.similarity(ref_string, hyp_string) == len(shared)):
                    # Every LCS has len(shared) matches, each a different shared word (no shared
                    # word repeats on one side): its words are all the shared words, whatever
                    # the tie-break.
                    union |= shared
                else:
                    key = (ref_sentence, hyp_sentence)
                    words = cache.get(key)
                    if words is None:
                        if len(cache) > _LCS_CACHE_LIMIT:
                            cache.clear()
                        if masks is None:
                            masks = hyp_record[4] = _hyp_masks(hyp_sentence)
                        words = cache[key] = _lcs_words(ref_sentence, hyp_sentence, masks, len(shared))
                    union |= words
                if len(union) == len(common):
                    return len(union)
        return len(union)

    def _official_pairs(self, hyps: np.ndarray, refs: np.ndarray) -> np.ndarray:
        hyp_words, ref_words = self._unigrams.distinct(hyps), self._unigrams.distinct(refs)
        hyp_bigrams, ref_bigrams = self._bigrams.distinct(hyps), self._bigrams.distinct(refs)
        overlaps = [self._unigrams.overlap(hyps, refs, counted=False),
                    self._bigrams.overlap(hyps, refs, counted=False),
                    np.array([self._union_lcs(h, r) for h, r in zip(hyps.tolist(), refs.tolist())], dtype=float)]
        totals = [(hyp_words, ref_words), (hyp_bigrams, ref_bigrams), (hyp_words, ref_words)]
        out = np.zeros((len(hyps), 3, 3))
        with np.errstate(divide="ignore", invalid="ignore"):
            for metric, (overlap, (hyp_total, ref_total)) in enumerate(zip(overlaps, totals)):
                precision = np.where(hyp_total > 0, overlap / hyp_total, 0.0)
                recall = np.where(ref_total > 0, overlap / ref_total, 0.0)
                out[:, metric, 0] = precision
                out[:, metric, 1] = recall
                out[:, metric, 2] = 2.0 * ((precision * recall) / (precision + recall + 1e-8))
        # rouge 1.0.1 refuses a text with no sentence left (empty, or only "."): it scores 0 here.
        empty = (hyp_words == 0) | (ref_words == 0)
        out[empty] = 0.0
        return out

    def _counted_pairs(self, hyps: np.ndarray, refs: np.ndarray) -> np.ndarray:
        counts = np.asarray(self._token_counts, dtype=np.int64)
        hyp_tokens, ref_tokens = counts[hyps], counts[refs]
        lcs = np.zeros(len(hyps))
        both = np.flatnonzero((hyp_tokens > 0) & (ref_tokens > 0))
        if len(both):
            strings = self._lcs_strings
            hyp_texts = [strings[h] for h in hyps[both].tolist()]
            ref_texts = [strings[r] for r in refs[both].tolist()]
            if all(isinstance(t, str) for t in hyp_texts + ref_texts):
                lcs[both] = cpdist(hyp_texts, ref_texts, scorer=LCSseq.similarity, dtype=np.int64)
            else:
                lcs[both] = [LCSseq.similarity(h, r) for h, r in zip(hyp_texts, ref_texts)]
        overlaps = [self._unigrams.overlap(hyps, refs, counted=True),
                    self._bigrams.overlap(hyps, refs, counted=True), lcs]
        totals = [(hyp_tokens, ref_tokens), (np.maximum(hyp_tokens - 1, 0), np.maximum(ref_tokens - 1, 0)),
                  (hyp_tokens, ref_tokens)]
        out = np.zeros((len(hyps), 3, 3))
        with np.errstate(divide="ignore", invalid="ignore"):
            for metric, (overlap, (hyp_total, ref_total)) in enumerate(zip(overlaps, totals)):
                precision = overlap / np.maximum(hyp_total, 1)
                recall = overlap / np.maximum(ref_total, 1)
                total = precision + recall
                out[:, metric, 0] = precision
                out[:, metric, 1] = recall
                out[:, metric, 2] = np.where(total > 0, 2 * precision * recall / total, 0.0)
        return out

    @cached_property
    def scores_identity(self) -> str:
        """What a pair's scores depend on: the tokens (tokenizer identity), the convention and this
        module's code and libraries (any change to them is a new identity: old scores never answer);
        "" (no persistent scores) for a tokenizer without an identity or code that cannot be read."""

        if not self.tokenizer.identity:
            return ""
        try:
            code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        except OSError:
            return ""
        return json.dumps({"scores": self.convention, "tokens": self.tokenizer.identity, "metric.py": code,
                           "numpy": np.__version__, "rapidfuzz": version("rapidfuzz")}, sort_keys=True)

    def score_pairs(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """Scores of hyps[i] against refs[i]: array (pairs, 3 metrics, 3 stats). In a workspace, the
        same list of pairs scored by an earlier command (cv and submit score each source's OOF rows,
        MBR the same chunks) is read back from the persistent cache (the same float64 bytes)."""
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
        if not len(hyps):
            return np.zeros((0, 3, 3))
        store = token_cache.active_store() if self.scores_identity and len(hyps) >= _STORE_MIN_PAIRS else None
        if store is None:
            return self._compute_pairs(hyps, refs)
        # One entry per list of pairs: a row per pair would cost a random b-tree write each (as long
        # as counting it), one row per list costs one write. Lengths first: no two lists read the same.
        pairs = "".join(f"{len(hyp)}:{hyp}{len(ref)}:{ref}" for hyp, ref in zip(hyps, refs))
        (stored,) = store.get_values(self.scores_identity, [pairs])
        if isinstance(stored, bytes) and len(stored) == len(hyps) * _PAIR_BYTES:
            return np.frombuffer(stored, dtype=_STORED_FLOAT).reshape(-1, 3, 3).astype(float)
        scores = self._compute_pairs(hyps, refs)
        store.put_values(self.scores_identity, [pairs], [scores.astype(_STORED_FLOAT).tobytes()])
        return scores

    def _compute_pairs(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        get = self._index.get
        hyp_rows, ref_rows = [get(h) for h in hyps], [get(r) for r in refs]
        if None in hyp_rows or None in ref_rows:
            self.prepare(list(hyps) + list(refs))
            hyp_rows, ref_rows = [get(h) for h in hyps], [get(r) for r in refs]
        hyp_rows, ref_rows = np.array(hyp_rows, dtype=np.int64), np.array(ref_rows, dtype=np.int64)
        if self.convention == "official":
            return self._official_pairs(hyp_rows, ref_rows)
        return self._counted_pairs(hyp_rows, ref_rows)

    # -- rows -----------------------------------------------------------------------------
    def score(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> RougeResult:
        """Score each prediction against its reference(s); several are combined by ``multi_ref``."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference rows")
        if all(isinstance(r, str) for r in references):  # one reference per row
            return RougeResult(self.score_pairs(predictions, references))
        ref_lists = [[r] if isinstance(r, str) else [x for x in r if x] for r in references]
        hyps = [p for p, refs in zip(predictions, ref_lists) for _ in refs]
        flat_refs = [r for refs in ref_lists for r in refs]
        pair_scores = self.score_pairs(hyps, flat_refs)
        counts = np.array([len(refs) for refs in ref_lists], dtype=np.int64)
        if len(pair_scores) == len(predictions) and (counts == 1).all():
            return RougeResult(pair_scores)
        per_row = np.zeros((len(predictions), 3, 3))
        starts = np.cumsum(counts) - counts
        scored = np.flatnonzero(counts > 0)
        if self.multi_ref == "mean":
            # The competition scores a prediction against each reference and averages.
            sums = np.add.reduceat(pair_scores, starts[scored], axis=0) if len(scored) else per_row[:0]
            per_row[scored] = sums / counts[scored, None, None]
        else:
            for row in scored.tolist():
                block = pair_scores[starts[row]:starts[row] + counts[row]]
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
