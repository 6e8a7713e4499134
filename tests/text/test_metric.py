"""The metric: hand-checkable cases, edge cases, then both oracles on real and random texts
(`competition score` on files: test_scoring.py)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import first_turns

from competition.data.loading import read_split
from competition.errors import ConfigError
from competition.text.metric import RougeScorer, score
from competition.text.tokenizers import get_tokenizer

METRICS = ["rouge1", "rouge2", "rougeL"]


def official_f(precision: float, recall: float) -> float:
    """rouge 1.0.1's F: the 1e-8 in the denominator is part of the competition's number."""
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


# -- hand-checkable ---------------------------------------------------------------------------
def test_rouge_score_convention_hand_case():
    # rouge-score's own example: score(target="testing one two", prediction="testing").
    result = score(["testing"], ["testing one two"], tokenizer="whitespace", convention="rouge-score")
    r1, r2, rl = result.per_row[0]
    assert list(r1) == [1.0, pytest.approx(1 / 3, abs=1e-15), pytest.approx(0.5, abs=1e-15)]
    assert list(r2) == [0.0, 0.0, 0.0]  # one token: no bigram
    assert list(rl) == [1.0, pytest.approx(1 / 3, abs=1e-15), pytest.approx(0.5, abs=1e-15)]
    assert result.final == pytest.approx((0.5 + 0 + 0.5) / 3 * 100, abs=1e-12)


def test_official_convention_hand_case_keeps_the_1e8():
    result = score(["testing"], ["testing one two"], tokenizer="whitespace", convention="official")
    r1, r2, rl = result.per_row[0]
    assert r1[0] == 1.0 and r1[1] == pytest.approx(1 / 3, abs=1e-15)
    assert r1[2] == official_f(1.0, 1 / 3)
    assert r1[2] != 0.5 and abs(r1[2] - 0.5) < 1e-8
    assert list(r2) == [0.0, 0.0, 0.0]
    assert rl[2] == official_f(1.0, 1 / 3)


def test_official_counts_each_distinct_ngram_once():
    # "a a b" vs "a b": distinct unigrams {a, b} on both sides -> P = R = 1 in rouge 1.0.1.
    official = score(["a a b"], ["a b"], tokenizer="whitespace", convention="official").per_row[0]
    assert official[0, 0] == 1.0 and official[0, 1] == 1.0
    # rouge-score counts: overlap 2 of 3 hypothesis tokens.
    counted = score(["a a b"], ["a b"], tokenizer="whitespace", convention="rouge-score").per_row[0]
    assert counted[0, 0] == pytest.approx(2 / 3) and counted[0, 1] == 1.0


def test_official_rouge_l_is_union_lcs_over_sentences():
    # The ROUGE working note's example: r = w1..w5, C = "w1 w2 w6 w7 w8 . w1 w3 w8 w9 w5"; LCS_u = 4.
    result = score(["w1 w2 w6 w7 w8 . w1 w3 w8 w9 w5"], ["w1 w2 w3 w4 w5"], tokenizer="whitespace",
                   convention="official")
    rouge_l = result.per_row[0, 2]
    assert rouge_l[1] == pytest.approx(4 / 5)  # recall over 5 reference words
    assert rouge_l[0] == pytest.approx(4 / 8)  # precision over 8 distinct candidate words


@pytest.mark.parametrize("prediction", ["", ".", "...", "…", " . . "])
def test_empty_or_punctuation_prediction_scores_zero_in_official(prediction):
    from rouge import Rouge

    reference = "우산을 찾습니다."
    tokenizer = get_tokenizer("kiwi")
    hyp, ref = (" ".join(tokens) for tokens in tokenizer.tokenize_many([prediction, reference]))
    if not [part for part in hyp.split(".") if part]:
        with pytest.raises(ValueError):  # the oracle package refuses what has no sentence left
            Rouge().get_scores(hyp, ref)
    else:  # " . . " leaves an empty "sentence" that rouge 1.0.1 scores (as 0 here)
        assert [row["f"] for row in Rouge().get_scores(hyp, ref)[0].values()] == [0.0, 0.0, 0.0]
    result = score([prediction], [reference], convention="official")
    assert result.per_row.tolist() == np.zeros((1, 3, 3)).tolist()
    assert result.final == 0.0


def test_empty_prediction_scores_zero_in_rouge_score():
    result = score([""], ["우산을 찾습니다."], convention="rouge-score")
    assert result.final == 0.0


def test_identical_korean_text_scores_one():
    text = "#Person2#는 파란 우산을 잃어버렸고 #Person1#이 분실물 센터에서 찾아 줍니다."
    counted = score([text], [text], convention="rouge-score")
    assert counted.per_row.tolist() == np.ones((1, 3, 3)).tolist()
    assert counted.final == 100.0
    official = score([text], [text], convention="official")
    assert official.per_row[0, :, :2].tolist() == np.ones((3, 2)).tolist()
    # F = 2 / (2 + 1e-8): one minus 5e-9, not 1.0.
    assert official.per_row[0, :, 2].tolist() == [official_f(1.0, 1.0)] * 3
    assert official.final == pytest.approx(100 * (1 - 5e-9), abs=1e-12)


def test_multi_reference_mean_versus_max():
    refs = [["a b c", "x y z"]]
    mean = score(["a b c"], refs, tokenizer="whitespace", convention="rouge-score", multi_ref="mean")
    best = score(["a b c"], refs, tokenizer="whitespace", convention="rouge-score", multi_ref="max")
    assert mean.f1 == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}
    assert best.f1 == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # Empty references in a row are ignored, not scored as zeros.
    padded = score(["a b c"], [["a b c", "", "x y z"]], tokenizer="whitespace", convention="rouge-score")
    assert padded.f1 == mean.f1


def test_max_picks_the_best_reference_per_metric():
    refs = [["a b c d", "c d a b"]]
    best = score(["a b c d"], refs, tokenizer="whitespace", convention="rouge-score", multi_ref="max")
    scorer = RougeScorer("whitespace", "rouge-score")
    pairs = scorer.score_pairs(["a b c d"] * 2, refs[0])
    assert best.per_row[0].tolist() == pairs.max(axis=0).tolist()


def test_google_default_tokenizer_scores_korean_zero():
    """Why we never use rouge-score's default tokenizer: it keeps only [a-z0-9]."""
    from rouge_score import rouge_scorer

    text = "파란 우산을 잃어버렸어요"
    scores = rouge_scorer.RougeScorer(METRICS).score(text, text)
    assert [scores[m].fmeasure for m in METRICS] == [0.0, 0.0, 0.0]
    assert score([text], [text], convention="rouge-score").final == 100.0


def test_unknown_convention_tokenizer_and_rule_are_config_errors():
    with pytest.raises(ConfigError, match="convention"):
        RougeScorer("whitespace", "rouge")
    with pytest.raises(ConfigError, match="tokenizer 'mecabb'"):
        RougeScorer("mecabb", "official")
    with pytest.raises(ConfigError, match="multi-reference"):
        RougeScorer("whitespace", "official", "median")


def test_repeated_scoring_reuses_cached_tokens_and_gives_the_same_numbers():
    scorer = RougeScorer("kiwi", "official")
    preds = ["우산을 찾습니다. 감사합니다.", "영화를 봅니다."]
    refs = ["파란 우산을 찾아 줍니다.", "내일 영화를 보기로 합니다."]
    first = scorer.score(preds, refs).per_row
    scorer._lcs_cache.clear()
    assert scorer.score(preds, refs).per_row.tolist() == first.tolist()


# -- oracles on real data -----------------------------------------------------------------------
class FixedTokens:
    """A rouge-score tokenizer object that returns our tokens for each text."""

    def __init__(self, tokenizer, texts):
        unique = list(dict.fromkeys(texts))
        self.tokens = dict(zip(unique, tokenizer.tokenize_many(unique)))

    def tokenize(self, text):
        return self.tokens[text]


def rouge_101_scores(tokenizer, hyps, refs) -> np.ndarray:
    from rouge import Rouge

    joined_hyps = [" ".join(t) for t in tokenizer.tokenize_many(hyps)]
    joined_refs = [" ".join(t) for t in tokenizer.tokenize_many(refs)]
    rows = Rouge().get_scores(joined_hyps, joined_refs)
    return np.array([[[row[m]["p"], row[m]["r"], row[m]["f"]] for m in ("rouge-1", "rouge-2", "rouge-l")]
                     for row in rows])


def google_scores(tokenizer, hyps, refs) -> np.ndarray:
    from rouge_score import rouge_scorer

    oracle = rouge_scorer.RougeScorer(METRICS, tokenizer=FixedTokens(tokenizer, hyps + refs))
    rows = [oracle.score(ref, hyp) for hyp, ref in zip(hyps, refs)]
    return np.array([[[row[m].precision, row[m].recall, row[m].fmeasure] for m in METRICS] for row in rows])


@pytest.fixture(scope="module")
def korean_dev():
    from conftest import require_shared_data

    dev = read_split(require_shared_data() / "dialogsum-ko" / "dev.csv", "dev")
    return first_turns(dev), list(dev["summary"])


@pytest.fixture(scope="module")
def english_dev():
    from conftest import require_shared_data

    dev = read_split(require_shared_data() / "dialogsum-en" / "dev.jsonl", "dev")
    return first_turns(dev), list(dev["summary"])


@pytest.mark.parametrize("data, tokenizer_name", [("korean_dev", "kiwi"), ("english_dev", "english")])
def test_official_equals_rouge_101(request, data, tokenizer_name):
    hyps, refs = request.getfixturevalue(data)
    tokenizer = get_tokenizer(tokenizer_name)
    expected = rouge_101_scores(tokenizer, hyps, refs)
    ours = RougeScorer(tokenizer_name, "official").score(hyps, refs)
    assert ours.per_row.shape == expected.shape == (len(hyps), 3, 3)
    np.testing.assert_allclose(ours.per_row, expected, rtol=0, atol=1e-9)
    corpus = expected[:, :, 2].mean(axis=0)
    assert [ours.f1[m] for m in METRICS] == pytest.approx(list(corpus), abs=1e-9)


@pytest.mark.parametrize("data, tokenizer_name", [("korean_dev", "kiwi"), ("english_dev", "english")])
def test_rouge_score_convention_equals_google_rouge_score(request, data, tokenizer_name):
    hyps, refs = request.getfixturevalue(data)
    tokenizer = get_tokenizer(tokenizer_name)
    expected = google_scores(tokenizer, hyps, refs)
    ours = RougeScorer(tokenizer_name, "rouge-score").score(hyps, refs)
    np.testing.assert_allclose(ours.per_row, expected, rtol=0, atol=1e-9)
    corpus = expected[:, :, 2].mean(axis=0)
    assert [ours.f1[m] for m in METRICS] == pytest.approx(list(corpus), abs=1e-9)


def test_documented_korean_dev_finals(korean_dev):
    hyps, refs = korean_dev
    assert score(hyps, refs, convention="official").final == pytest.approx(15.7795, abs=5e-5)
    assert score(hyps, refs, convention="rouge-score").final == pytest.approx(14.7160, abs=5e-5)


def test_official_equals_rouge_101_on_random_texts():
    """Sentences, repeated words, empty pieces (". ."): the cases real data reaches rarely."""
    import random

    generator = random.Random(8)
    words = ["a", "b", "c", "d", "e", "f", ".", "."]

    def text():
        return " ".join(generator.choice(words) for _ in range(generator.randint(1, 14)))

    hyps = [text() for _ in range(600)]
    refs = [text() for _ in range(600)]
    valid = [i for i in range(600) if [p for p in hyps[i].split(".") if p] and [p for p in refs[i].split(".") if p]]
    expected = rouge_101_scores(get_tokenizer("whitespace"), [hyps[i] for i in valid], [refs[i] for i in valid])
    scores = RougeScorer("whitespace", "official").score(hyps, refs).per_row
    np.testing.assert_allclose(scores[valid], expected, rtol=0, atol=1e-12)
    assert not scores[[i for i in range(600) if i not in valid]].any()
    assert 50 < len(valid) < 600


def test_rouge_score_convention_equals_google_on_random_texts():
    import random

    generator = random.Random(9)

    def text():
        return " ".join(generator.choice("abcdef") for _ in range(generator.randint(0, 14)))

    hyps, refs = [text() for _ in range(400)], [text() for _ in range(400)]
    expected = google_scores(get_tokenizer("whitespace"), hyps, refs)
    scores = RougeScorer("whitespace", "rouge-score").score(hyps, refs).per_row
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def test_lcs_words_follow_rouge_101_tie_break():
    """Which LCS rouge 1.0.1 reconstructs decides ROUGE-L: ref "a b", hyp "b a" keeps b, not a."""
    import random

    from rouge.rouge_score import _recon_lcs

    from competition.text.metric import _lcs_words

    assert _lcs_words((1, 2), (2, 1)) == set(_recon_lcs([1, 2], [2, 1])._ngrams) == {2}
    generator = random.Random(3)
    for _ in range(3000):
        vocabulary = generator.randint(1, 6)
        ref = tuple(generator.randrange(vocabulary) for _ in range(generator.randint(1, 12)))
        hyp = tuple(generator.randrange(vocabulary) for _ in range(generator.randint(1, 12)))
        expected = set(_recon_lcs(list(ref), list(hyp))._ngrams)
        assert _lcs_words(ref, hyp) == expected
        assert _lcs_words(ref, hyp, shared=len(set(ref) & set(hyp))) == expected
