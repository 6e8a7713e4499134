"""Tokenizers for ROUGE: objects with `tokenize_many(texts) -> list[list[str]]`.

Google's rouge-score default tokenizer keeps only [a-z0-9] and so scores every Korean pair 0.0;
these are the ones to use instead. A new analyser (e.g. mecab) is one class and one registry entry.
"""
from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence


class Tokenizer(Protocol):
    name: str

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]: ...


class KiwiTokenizer:
    """Korean morphemes from kiwipiepy, the surface form of each token."""

    name = "kiwi"

    def __init__(self) -> None:
        from kiwipiepy import Kiwi

        # The batch API is ~5x faster than one call per text even on one worker.
        self._kiwi = Kiwi()

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        if not texts:
            return []
        return [[token.form for token in tokens] for tokens in self._kiwi.tokenize(list(texts))]


class WhitespaceTokenizer:
    """Split on white space, nothing else."""

    name = "whitespace"

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        return [text.split() for text in texts]


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


class EnglishTokenizer:
    """Lower-case alphanumeric words, as rouge-score's default tokenizer (without stemming)."""

    name = "english"

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        return [_NON_ALNUM.sub(" ", text.lower()).split() for text in texts]


TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {
    "kiwi": KiwiTokenizer,
    "whitespace": WhitespaceTokenizer,
    "english": EnglishTokenizer,
}

_instances: dict[str, Tokenizer] = {}
# Tokens of every text seen, per tokenizer: retrieval's k folds and the near-duplicate search
# tokenise the same dialogues again and again in one process.
_token_cache: dict[str, dict[str, list[str]]] = {}


def get_tokenizer(name: str) -> Tokenizer:
    """The shared instance of a tokenizer by name (Kiwi takes a second to load)."""
    from .errors import ConfigError

    if name not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {name!r}: choose one of {', '.join(sorted(TOKENIZERS))}")
    if name not in _instances:
        _instances[name] = TOKENIZERS[name]()
    return _instances[name]


def cached_tokens(texts: Sequence[str], tokenizer: str) -> list[list[str]]:
    """Tokens of each text by the named tokenizer, each distinct text tokenised once per process
    (and the tokenizer loaded only when a text misses)."""
    cache = _token_cache.setdefault(tokenizer, {})
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    if missing:
        for text, tokens in zip(missing, get_tokenizer(tokenizer).tokenize_many(missing)):
            cache[text] = tokens
    return [cache[t] for t in texts]
