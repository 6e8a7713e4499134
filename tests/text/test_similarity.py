"""similarity.py: the blockwise search equals a brute-force cosine matrix; clusters are connected components."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from korean_fixture import DIALOGUES

import competition.text.similarity as similarity
from competition.text.similarity import (cluster_stats, components, nearest, self_nearest, similarity_summary,
                                         tfidf_vectors)
from competition.text.tokenizers import get_tokenizer


def brute_force(texts: list[str], queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's own TF-IDF (same tokens, 1 + log tf) and a full dense cosine matrix."""
    kiwi = get_tokenizer("kiwi")
    vectorizer = TfidfVectorizer(analyzer=lambda tokens: tokens, sublinear_tf=True)
    fitted = vectorizer.fit_transform(kiwi.tokenize_many(texts))
    asked = vectorizer.transform(kiwi.tokenize_many(queries))
    return (fitted @ fitted.T).toarray(), (asked @ fitted.T).toarray()


@pytest.fixture
def texts() -> list[str]:
    dialogues = [row[1] for row in DIALOGUES]
    # A copy with other white space and an edit of one turn: real near-duplicates among the rest.
    return dialogues + [dialogues[0].replace("\n", "\n "), dialogues[5].replace("목요일", "금요일")]


def test_blockwise_search_equals_a_dense_cosine_matrix(texts, monkeypatch):
    monkeypatch.setattr(similarity, "BLOCK_ROWS", 3)  # several blocks, one of them partial
    monkeypatch.setattr(similarity, "DENSE_FEATURES", 5)  # both the dense and the sparse part count
    within, across = brute_force(texts, texts[:4])
    np.fill_diagonal(within, -1)
    vectors, queries = tfidf_vectors(texts, "kiwi", texts[:4])

    found = self_nearest(vectors, threshold=0.5)
    np.testing.assert_allclose(found.similarity, within.max(axis=1), atol=1e-5)
    assert found.position.tolist() == within.argmax(axis=1).tolist()
    expected_pairs = {(i, j) for i, j in zip(*np.nonzero(within >= 0.5)) if i < j}
    assert {tuple(pair) for pair in found.pairs.tolist()} == expected_pairs == {(0, 12), (5, 13)}

    outside = nearest(queries, vectors)
    np.testing.assert_allclose(outside.similarity, across.max(axis=1), atol=1e-5)
    assert outside.similarity[0] == pytest.approx(1.0, abs=1e-5)  # a dialogue is its own nearest

    # Groups: rows 0 and 12 share a group, so each must find its best match outside it.
    groups = np.arange(len(texts))
    groups[12] = 0
    grouped = nearest(vectors, vectors, groups, groups)
    allowed = np.where(groups[:, None] == groups[None, :], -1, within)
    np.testing.assert_allclose(grouped.similarity, allowed.max(axis=1), atol=1e-5)
    assert grouped.similarity[0] < 0.5


def test_nearest_with_nothing_allowed_and_empty_inputs(texts):
    vectors, = tfidf_vectors(texts[:2], "kiwi")
    same = np.zeros(2, dtype=int)
    found = nearest(vectors, vectors, same, same)
    assert found.similarity.tolist() == [0.0, 0.0] and found.position.tolist() == [-1, -1]
    assert len(nearest(vectors[:0], vectors).similarity) == 0
    with pytest.raises(ValueError, match="both"):
        nearest(vectors, vectors, same, None)


def test_components_are_numbered_by_first_row():
    labels = components(6, np.array([[4, 1], [5, 4], [2, 3]]))
    assert labels.tolist() == [0, 1, 2, 2, 1, 1]
    assert cluster_stats(labels) == {"clusters": 2, "rows_in_clusters": 5, "largest": 3}
    assert cluster_stats(components(3, np.zeros((0, 2), dtype=int))) == {"clusters": 0, "rows_in_clusters": 0,
                                                                           "largest": 1}


def test_similarity_summary_by_hand():
    summary = similarity_summary(np.array([0.1, 0.2, 0.5, 0.95]))
    assert summary["rows"] == 4
    assert summary["share_at_least"] == {"0.5": 0.5, "0.9": 0.25}
    assert summary["quantiles"]["p50"] == pytest.approx(0.35)
    assert similarity_summary(np.array([]))["rows"] == 0


def test_top_columns_are_each_rows_best_in_order_ties_to_the_lower_column():
    from competition.text.similarity import top_columns

    rng = np.random.default_rng(3)
    for shape, width in (((50, 700), 32), ((4, 5), 32), ((6, 90), 1)):
        block = rng.integers(0, 20, size=shape).astype(np.float32) / 20  # many ties
        block[:, 0] = -1.0
        columns, values = top_columns(block, width)
        expected = np.argsort(-block, axis=1, kind="stable")[:, :min(width, shape[1])]
        assert np.array_equal(columns, expected)
        assert np.array_equal(values, np.take_along_axis(block, expected, axis=1))


def test_neighbours_leave_out_the_rows_own_group():
    from scipy import sparse

    from competition.text.similarity import nearest

    vectors = sparse.csr_matrix(np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]], dtype=np.float32))
    groups = np.array([0, 0, 1, 1])
    found = nearest(vectors, vectors, groups, groups, neighbours=3)
    assert found.neighbours[0].tolist() == [2, 3, -1]  # row 1 shares its group; only two rows left
    assert found.neighbours[0, 0] == found.position[0]
    assert found.neighbour_similarity[0, 0] == pytest.approx(found.similarity[0])
