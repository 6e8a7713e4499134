"""The metric: hand-checkable cases, edge cases, then both oracles on real data; `competition score`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from competition.data import read_split, references
from competition.errors import ConfigError
from competition.metric import RougeScorer, score
from competition.tokenizers import get_tokenizer

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


def test_hangul_survives_kiwi():
    tokens = get_tokenizer("kiwi").tokenize_many(["파란 우산을 잃어버렸어요.", "#Person1#: 안녕하세요"])
    assert {"우산", "을", "잃어버리"} <= set(tokens[0])
    assert "안녕" in tokens[1]
    # Korean identical text is not scored 0.0 (as Google's default tokenizer would).
    assert score(["우산"], ["우산"], convention="rouge-score").f1["rouge1"] == 1.0


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


def first_turns(frame: pd.DataFrame) -> list[str]:
    return [dialogue.split("\n")[0] for dialogue in frame["dialogue"]]


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


# -- `competition score` ------------------------------------------------------------------------
@pytest.fixture
def dev_predictions(tmp_path, shared_data):
    """First-turn predictions for dialogsum-ko/dev.csv, written as fname,summary."""
    dev = read_split(shared_data / "dialogsum-ko" / "dev.csv", "dev")
    path = tmp_path / "first_turn.csv"
    pd.DataFrame({"fname": dev["fname"], "summary": first_turns(dev)}).to_csv(path, index=False)
    return path, shared_data / "dialogsum-ko" / "dev.csv", dev


def test_score_cli_json_gives_the_official_final(cli, tmp_path, dev_predictions):
    predictions, refs, dev = dev_predictions
    result = cli(["score", predictions, "--refs", refs, "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    expected = RougeScorer("kiwi", "official").score(first_turns(dev), references(dev))
    assert report["rows"] == 499
    assert report["final"] == pytest.approx(expected.final, abs=1e-9)
    assert report["final"] == pytest.approx(15.78, abs=0.005)
    # One unit everywhere: R1/R2/RL F1 x 100, like the final (before, 0.2x next to a final of 15.78).
    assert report["rouge1"]["f1"] == pytest.approx(expected.f1["rouge1"] * 100, abs=1e-10)
    assert report["final"] == pytest.approx(np.mean([report[m]["f1"] for m in METRICS]), abs=1e-9)


def test_score_cli_rouge_score_convention_and_table(cli, tmp_path, dev_predictions):
    predictions, refs, _ = dev_predictions
    result = cli(["score", predictions, "--refs", refs, "--convention", "rouge-score", "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["final"] == pytest.approx(14.72, abs=0.005)
    table = cli(["score", predictions, "--refs", refs], cwd=tmp_path)
    assert table.exit_code == 0, table.output
    assert "15.78" in table.output and "final" in table.output


def test_score_cli_by_topic_breaks_down(cli, tmp_path, dev_predictions):
    predictions, refs, dev = dev_predictions
    result = cli(["score", predictions, "--refs", refs, "--by", "topic", "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["by"]) == set(dev["topic"])
    assert sum(part["rows"] for part in report["by"].values()) == 499
    weighted = sum(part["final"] * part["rows"] for part in report["by"].values()) / 499
    assert weighted == pytest.approx(report["final"], abs=1e-9)
    table = cli(["score", predictions, "--refs", refs, "--by", "topic"], cwd=tmp_path)
    assert table.exit_code == 0 and dev["topic"].iloc[0] in table.output


def test_score_cli_rejects_missing_and_extra_ids(cli, tmp_path, korean_rows):
    refs = tmp_path / "refs.csv"
    korean_rows.to_csv(refs, index=False)
    predictions = tmp_path / "preds.csv"
    frame = pd.DataFrame({"fname": list(korean_rows["fname"][2:]) + ["zz_1"], "summary": "요약"})
    frame.to_csv(predictions, index=False)
    result = cli(["score", predictions, "--refs", refs], cwd=tmp_path)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "2 reference id(s) have no prediction" in message and "f_0" in message
    assert "1 predicted id(s) are not in" in message and "zz_1" in message


def test_score_cli_rejects_unknown_by_column(cli, tmp_path, korean_rows):
    refs = tmp_path / "refs.csv"
    korean_rows.to_csv(refs, index=False)
    predictions = tmp_path / "preds.csv"
    korean_rows[["fname", "summary"]].to_csv(predictions, index=False)
    result = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--by", "speaker"],
                 cwd=tmp_path)
    assert result.exit_code == 2 and "--by speaker" in result.output
    ok = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--json"], cwd=tmp_path)
    assert json.loads(ok.output)["final"] == pytest.approx(100 * (1 - 5e-9), abs=1e-9)


def test_score_cli_multi_reference_jsonl(cli, tmp_path):
    refs = tmp_path / "refs.jsonl"
    rows = [{"fname": "a", "dialogue": "d", "summary1": "x y z", "summary2": "p q r", "summary3": "x y r"},
            {"fname": "b", "dialogue": "d", "summary1": "m n", "summary2": "m n"}]
    refs.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    predictions = tmp_path / "preds.csv"
    pd.DataFrame({"fname": ["b", "a"], "summary": ["m n", "x y z"]}).to_csv(predictions, index=False)
    args = ["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--convention", "rouge-score",
            "--json"]
    mean = json.loads(cli(args, cwd=tmp_path).output)
    # Row a: F1 vs its three references 1, 0, 2/3 (R1) -> mean 5/9; row b: 1.
    assert mean["rouge1"]["f1"] == pytest.approx((5 / 9 + 1) / 2 * 100, abs=1e-10)
    best = json.loads(cli(args + ["--multi-ref", "max"], cwd=tmp_path).output)
    assert best["final"] == pytest.approx(100.0, abs=1e-12)


def test_official_equals_rouge_101_on_random_texts():
    """Sentences, repeated words, empty pieces (". ."): the cases real data reaches rarely."""
    import random

    from rouge import Rouge

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

    from competition.metric import _lcs_words

    assert _lcs_words((1, 2), (2, 1)) == set(_recon_lcs([1, 2], [2, 1])._ngrams) == {2}
    generator = random.Random(3)
    for _ in range(3000):
        vocabulary = generator.randint(1, 6)
        ref = tuple(generator.randrange(vocabulary) for _ in range(generator.randint(1, 12)))
        hyp = tuple(generator.randrange(vocabulary) for _ in range(generator.randint(1, 12)))
        expected = set(_recon_lcs(list(ref), list(hyp))._ngrams)
        assert _lcs_words(ref, hyp) == expected
        assert _lcs_words(ref, hyp, shared=len(set(ref) & set(hyp))) == expected


def test_score_cli_counts_empty_predictions_and_strict_refuses_them(cli, tmp_path, korean_rows):
    """Before, empty and NaN summaries scored silently."""
    refs = tmp_path / "refs.csv"
    korean_rows.to_csv(refs, index=False)
    predictions = tmp_path / "preds.csv"
    frame = korean_rows[["fname", "summary"]].copy()
    frame.loc[[1, 4], "summary"] = ""
    frame.loc[6, "summary"] = None  # written as an empty field, read back as "" (a NaN in pandas)
    frame.to_csv(predictions, index=False)
    result = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--json"], cwd=tmp_path)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["empty_predictions"] == 3
    assert "warning: 3 of 12 predictions in" in result.stderr and "--strict" in result.stderr
    strict = cli(["score", predictions, "--refs", refs, "--tokenizer", "whitespace", "--strict"], cwd=tmp_path)
    assert strict.exit_code == 2 and "3 of 12 predictions are empty (e.g. f_1, f_4, f_6)" in strict.output
