"""Tokenizers: Kiwi keeps Hangul morphemes (the ROUGE of Korean text is counted on them)."""
from __future__ import annotations

from competition.text.metric import score
from competition.text.tokenizers import get_tokenizer


def test_hangul_survives_kiwi():
    tokens = get_tokenizer("kiwi").tokenize_many(["파란 우산을 잃어버렸어요.", "#Person1#: 안녕하세요"])
    assert {"우산", "을", "잃어버리"} <= set(tokens[0])
    assert "안녕" in tokens[1]
    # Korean identical text is not scored 0.0 (as Google's default tokenizer would).
    assert score(["우산"], ["우산"], convention="rouge-score").f1["rouge1"] == 1.0

