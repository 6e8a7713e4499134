"""Near-duplicate dialogues: TF-IDF cosine on the metric's tokens, searched block by block.

DialogSum's train set holds hundreds of dialogues that are copies or light edits of each other,
each with its own summary. This module finds them without a rows x rows matrix: vectors are
sparse, and each block of at most BLOCK_ROWS query rows meets all target rows in one dense
(block x targets) product. Shared by `data check`, `folds build` and `cv` (shift.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .tokenizers import cached_tokens

if TYPE_CHECKING:
    from scipy import sparse

BLOCK_ROWS = 1000
DENSE_FEATURES = 400
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SHARE_LEVELS = (0.5, 0.9)


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def tfidf_vectors(fit_texts: Sequence[str], tokenizer: str, *other_texts: Sequence[str]) -> list[sparse.csr_matrix]:
    """L2-normalised TF-IDF rows (unigrams of the metric's tokens, 1 + log tf) of `fit_texts`, whose
    document frequencies define the weights, then of each of `other_texts` with those weights."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer=_identity, sublinear_tf=True, dtype=np.float32)
    fitted = vectorizer.fit_transform(cached_tokens(list(fit_texts), tokenizer))
    return [fitted.tocsr()] + [vectorizer.transform(cached_tokens(list(texts), tokenizer)).tocsr()
                               for texts in other_texts]


@dataclass
class Nearest:
    """Per query row: the best cosine to an allowed target row and that row's position (-1 and
    0.0 when no target is allowed); `pairs` (query, target, cosine) at or above the threshold."""

    similarity: np.ndarray
    position: np.ndarray
    pairs: np.ndarray  # shape (n, 2) int64
    pair_similarity: np.ndarray
    neighbours: np.ndarray | None = None  # (queries, m) positions of the m best targets, best first; -1 = none
    neighbour_similarity: np.ndarray | None = None  # their cosines


def _similarity_blocks(queries: sparse.csr_matrix, targets: sparse.csr_matrix):
    """(start, stop, dense block of cosines queries[start:stop] x targets), BLOCK_ROWS queries at a time."""
    # The most frequent words link nearly every pair of dialogues, so the sparse product is dense
    # anyway: their columns go through a dense BLAS product, the long tail through a sparse one
    # (4x faster than either alone on 12k English dialogues).
    frequent = np.argsort(-np.bincount(targets.indices, minlength=targets.shape[1]), kind="stable")[:DENSE_FEATURES]
    rare = np.setdiff1d(np.arange(targets.shape[1]), frequent)
    targets_dense = targets[:, frequent].toarray()
    targets_rare = targets[:, rare].T.tocsr()
    queries_dense = queries[:, frequent].toarray()
    queries_rare = queries[:, rare].tocsr()
    for start in range(0, queries.shape[0], BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, queries.shape[0])
        block = queries_dense[start:stop] @ targets_dense.T
        block += (queries_rare[start:stop] @ targets_rare).toarray()
        yield start, stop, block


def top_columns(block: np.ndarray, width: int, chunks: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `width` largest values and their columns, best first (lower column on ties).

    Faster than a per-row partition of all columns: the width-th largest of the row's chunk maxima
    is a cutoff no top value is under (width chunk maxima reach it), and few values pass it.
    """
    rows, columns = block.shape
    width = min(width, columns)
    chunks = max(width, min(chunks, columns))
    chunk_max = np.maximum.reduceat(block, np.linspace(0, columns, chunks, endpoint=False).astype(int), axis=1)
    cutoff = np.partition(chunk_max, chunks - width, axis=1)[:, chunks - width]
    flat = np.flatnonzero(block >= cutoff[:, None])
    row, column = np.divmod(flat, columns)
    value = block.ravel()[flat]
    order = np.lexsort((column, -value, row))
    row, column, value = row[order], column[order], value[order]
    rank = np.arange(len(row)) - np.searchsorted(row, np.arange(rows))[row]
    keep = rank < width
    top = np.full((rows, width), -1, dtype=np.int64)
    top_value = np.full((rows, width), -np.inf, dtype=block.dtype)
    top[row[keep], rank[keep]] = column[keep]
    top_value[row[keep], rank[keep]] = value[keep]
    return top, top_value


def nearest(queries: sparse.csr_matrix, targets: sparse.csr_matrix, query_groups: np.ndarray | None = None,
            target_groups: np.ndarray | None = None, threshold: float | None = None,
            neighbours: int = 0) -> Nearest:
    """For each query row, its most similar target row outside its own group (groups None: any
    target); with `threshold`, also every such pair whose cosine is at least it; with `neighbours`
    = m, also each query's m most similar allowed targets, best first (Nearest.neighbours)."""
    if (query_groups is None) != (target_groups is None):
        raise ValueError("give both query_groups and target_groups, or neither")
    count = queries.shape[0]
    best = np.zeros(count, dtype=np.float32)
    where = np.full(count, -1, dtype=np.int64)
    pairs, pair_similarity = [], []
    width = min(neighbours, targets.shape[0])
    top = np.full((count, width), -1, dtype=np.int64)
    top_similarity = np.zeros((count, width), dtype=np.float32)
    if count == 0 or targets.shape[0] == 0:
        return Nearest(best, where, np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32),
                       top, top_similarity)
    for start, stop, block in _similarity_blocks(queries, targets):
        if query_groups is not None:
            block[query_groups[start:stop, None] == target_groups[None, :]] = -1.0
        found = block.argmax(axis=1)
        value = block[np.arange(stop - start), found]
        allowed = value > -1.0
        best[start:stop] = np.where(allowed, value, 0.0)
        where[start:stop] = np.where(allowed, found, -1)
        if threshold is not None:
            rows, columns = np.nonzero(block >= threshold)
            pairs.append(np.stack([rows + start, columns], axis=1))
            pair_similarity.append(block[rows, columns])
        if width:
            chosen, values = top_columns(block, width)
            top[start:stop] = np.where(values > -1.0, chosen, -1)
            top_similarity[start:stop] = np.where(values > -1.0, values, 0.0)
    if pairs:
        return Nearest(best, where, np.concatenate(pairs).astype(np.int64), np.concatenate(pair_similarity),
                       top, top_similarity)
    return Nearest(best, where, np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32), top, top_similarity)


def self_nearest(vectors: sparse.csr_matrix, threshold: float | None = None, neighbours: int = 0) -> Nearest:
    """Each row's most similar other row (and pairs at or above `threshold`, each once: i < j;
    and with `neighbours`, its m most similar other rows)."""
    own = np.arange(vectors.shape[0])
    found = nearest(vectors, vectors, own, own, threshold, neighbours)
    keep = found.pairs[:, 0] < found.pairs[:, 1]
    return Nearest(found.similarity, found.position, found.pairs[keep], found.pair_similarity[keep],
                   found.neighbours, found.neighbour_similarity)


def components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label of each of `count` rows linked by `pairs`, numbered in order of
    each component's first row (so the same rows in the same order give the same labels)."""
    from scipy.sparse import coo_matrix  # scipy: 0.3 s to import, needed by the near-duplicate search only
    from scipy.sparse.csgraph import connected_components

    if count == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first occurrence: scipy's numbering is already so, but this does not rely on it.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def cluster_stats(labels: np.ndarray) -> dict:
    """Clusters with two or more rows: how many, rows in them, and the largest."""
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    grouped = sizes[sizes > 1]
    return {"clusters": int(len(grouped)), "rows_in_clusters": int(grouped.sum()),
            "largest": int(grouped.max()) if len(grouped) else 1}


def similarity_summary(values: np.ndarray) -> dict:
    """Quantiles of nearest-neighbour cosines and the share of rows at or above each SHARE_LEVEL."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return {"rows": 0, "quantiles": {}, "share_at_least": {}}
    return {"rows": int(len(values)),
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES},
            "share_at_least": {f"{level:g}": float((values >= level).mean()) for level in SHARE_LEVELS}}
