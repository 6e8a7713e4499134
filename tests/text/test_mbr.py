"""MBR (minimum Bayes risk): per row, the member output the other members agree with most, on
hand-made cases; pairwise utilities by the metric, weights as a prior, the process pool."""
from __future__ import annotations

import numpy as np
import pytest

from competition.errors import ConfigError
from competition.text import mbr
from competition.text.mbr import mbr_select
from competition.text.metric import RougeScorer, get_scorer


def test_mbr_picks_the_consensus_output(words_scorer):
    # Member 1 is the centre: 4 of 5 words shared with members 2 and 3, who share only 3;
    # member 0 agrees with nobody and, though first, is not chosen.
    outputs = [["q r s t u"], ["a b c d e"], ["a b c d x"], ["a b y d e"]]
    assert mbr.mbr_select(outputs, words_scorer).tolist() == [1]


def test_mbr_consensus_on_korean_rows():
    scorer = RougeScorer("kiwi", "official", "mean")
    # Each row has three outputs on one topic and one off topic; the centre is the output whose
    # morphemes the other two on-topic outputs share: member 0 in row 0 (member 1 drops 내일 and
    # adds #Person2#에게, member 3 says 늦는다고), member 3 in row 1 (member 0 adds 함께, member 2
    # says 산에 for 등산을).
    outputs = [
        ["#Person1#는 내일 회의에 늦을 것 같다고 말합니다.", "두 사람은 주말에 함께 등산을 가기로 합니다."],
        ["#Person1#는 회의에 늦을 것 같다고 #Person2#에게 말합니다.", "#Person2#는 저녁 메뉴를 고릅니다."],
        ["#Person2#는 새 컴퓨터를 삽니다.", "두 사람은 주말에 산에 가기로 합니다."],
        ["#Person1#는 내일 회의에 늦는다고 말합니다.", "두 사람은 주말에 등산을 가기로 합니다."],
    ]
    assert mbr.mbr_select(outputs, scorer).tolist() == [0, 3]


def test_ties_go_to_the_earliest_member(words_scorer):
    # Two members: each agrees with the other equally; identical outputs are one output.
    assert mbr.mbr_select([["a b c"], ["a b d"]], words_scorer).tolist() == [0]
    assert mbr.mbr_select([["x y z"], ["a b c"], ["a b c"]], words_scorer).tolist() == [1]


def test_weights_act_as_a_prior_and_zero_weight_members_are_never_chosen(words_scorer):
    outputs = [["q r s t u"], ["a b c d e"], ["a b c d x"], ["a b y d e"]]
    assert mbr.mbr_select(outputs, words_scorer, weights=[0, 0, 1, 1]).tolist() == [2]
    # Member 0 agrees with nobody: only its own output's term, weighted 10, makes it win.
    assert mbr.mbr_select(outputs, words_scorer, weights=[10, 1, 1, 1]).tolist() == [0]
    with pytest.raises(ConfigError, match="non-negative"):
        mbr.mbr_select(outputs, words_scorer, weights=[0, 0, 0, 0])


def test_uniform_weights_choose_as_the_mean_over_the_other_members(words_scorer):
    # The own-output term is 1 for every non-empty output, so it cannot change a uniform choice.
    rng = np.random.default_rng(7)
    vocabulary = [f"w{i}" for i in range(8)]  # small: duplicates and exact ties happen
    for members in (2, 3, 4, 6):
        outputs = [[" ".join(rng.choice(vocabulary, rng.integers(1, 6))) for _ in range(60)] for _ in range(members)]
        utilities = mbr.pairwise_utilities(outputs, words_scorer, workers=1)
        others = (utilities.sum(axis=2) - utilities[:, np.arange(members), np.arange(members)]) / (members - 1)
        others_only = np.argmax(others >= others.max(axis=1, keepdims=True) - 1e-12, axis=1)
        np.testing.assert_array_equal(mbr.mbr_choose(utilities), others_only)


def test_pairwise_utilities_follow_the_metric_in_each_direction(words_scorer):
    outputs = [["a b c . d e", "", "same text"], ["a x c . e d b", "a b", "same text"], ["c a", "a b", "other"]]
    utilities = mbr.pairwise_utilities(outputs, words_scorer, "final")
    for row in range(3):
        for i in range(3):
            for j in range(3):
                hyp, ref = outputs[i][row], outputs[j][row]
                if hyp == ref:
                    expected = 1.0 if hyp else 0.0
                else:
                    expected = words_scorer.score_pairs([hyp], [ref])[0, :, 2].mean()
                assert utilities[row, i, j] == pytest.approx(expected), (row, i, j)
    rouge2 = mbr.pairwise_utilities(outputs, words_scorer, "rouge2")
    assert rouge2[0, 0, 1] == pytest.approx(words_scorer.score_pairs(["a b c . d e"], ["a x c . e d b"])[0, 1, 2])
    with pytest.raises(ConfigError, match="utility"):
        mbr.pairwise_utilities(outputs, words_scorer, "bleu")


def test_process_pool_gives_the_same_utilities(words_scorer, monkeypatch):
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(30)]
    outputs = [[" ".join(rng.choice(vocabulary, 6)) for _ in range(40)] for _ in range(4)]
    sequential = mbr.pairwise_utilities(outputs, words_scorer, workers=1)
    monkeypatch.setattr(mbr, "_POOL_MIN_PAIRS", 1)
    pooled = mbr.pairwise_utilities(outputs, words_scorer, workers=2)
    np.testing.assert_allclose(pooled, sequential)


def test_mbr_picks_the_output_closest_to_the_others():
    scorer = get_scorer("whitespace", "rouge-score", "mean")
    outputs = [["a b c d", "same", "p q"],
               ["a b c", "same", "p q"],
               ["x y z", "same", "r s"]]
    # Row 0: "a b c d" and "a b c" agree with each other (F1 is symmetric: a tie, the lower index
    # wins); "x y z" agrees with nobody. Row 1: all equal. Row 2: "p q" twice, tie -> index 0.
    chosen = mbr_select(outputs, scorer)
    assert chosen.tolist() == [0, 0, 0]
    assert mbr_select([["a b", "x"], ["z", "x y"], ["a b", "x y"]], scorer).tolist() == [0, 1]

