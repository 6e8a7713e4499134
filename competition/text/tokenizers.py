"""Tokenizers for ROUGE: objects with `tokenize_many(texts) -> list[list[str]]` and an `identity`.

Google's rouge-score default tokenizer keeps only [a-z0-9] and so scores every Korean pair 0.0;
these are the ones to use instead. A new analyser (e.g. mecab) is one class and one registry entry.
Every command reads tokens through `tokenize` / `cached_tokens`, which ask the persistent token
cache (token_cache.py) first: a tokenizer's `identity` (name, version, options) keys its entries.
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import cached_property
from importlib import metadata
from typing import Callable, Protocol, Sequence

from . import token_cache
from ..errors import ConfigError
from ..progress import progress


class Tokenizer(Protocol):
    name: str
    # Everything its tokens depend on (package and model versions, options): the persistent
    # cache's key for its tokens and for the scores computed on them. "" keeps both out of it.
    identity: str
    # Whether its tokens are worth keeping across commands: on 2 cores a stored text costs ~20 us
    # to write and ~5 us to read back, Kiwi ~0.4-1 ms to tokenise it, a regex ~1 us.
    persistent: bool

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]: ...


KIWI_PROGRESS_TEXTS = 2000  # tokenising fewer texts takes a few seconds at most: no progress shown


class KiwiTokenizer:
    """Korean morphemes from kiwipiepy, the surface form of each token. `options` go to `Kiwi()`
    (e.g. model_type, typos, integrate_allomorph); the model loads on the first text to tokenise."""

    name = "kiwi"
    persistent = True

    def __init__(self, **options) -> None:
        self.options = options

    @cached_property
    def identity(self) -> str:
        def installed(package: str) -> str:
            try:
                return metadata.version(package)
            except metadata.PackageNotFoundError:
                return "none"

        # num_workers changes the speed, never the tokens.
        options = {key: value for key, value in self.options.items() if key != "num_workers"}
        return json.dumps({"tokenizer": "kiwi", "kiwipiepy": installed("kiwipiepy"),
                           "model": installed("kiwipiepy_model"), "options": options},
                          sort_keys=True, default=repr)

    @cached_property
    def _kiwi(self):
        from kiwipiepy import Kiwi

        return Kiwi(**self.options)

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        if not texts:
            return []

        # The batch API is ~5x faster than one call per text even on one worker. A bar (or a closing
        # line in a log) where the wait is long enough to want one: ~650 dialogues/s on 2 cores.
        results = self._kiwi.tokenize(list(texts))
        with progress(total=len(texts), desc="kiwi", unit="texts", enabled=len(texts) >= KIWI_PROGRESS_TEXTS) as bar:
            tokens = []
            for analysed in results:
                tokens.append([token.form for token in analysed])
                bar.update()
        return tokens


class WhitespaceTokenizer:
    """Split on white space, nothing else."""

    name = "whitespace"
    persistent = False
    identity = f"whitespace: str.split(), unicode {unicodedata.unidata_version}"

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        return [text.split() for text in texts]


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


class EnglishTokenizer:
    """Lower-case alphanumeric words, as rouge-score's default tokenizer (without stemming)."""

    name = "english"
    persistent = False
    identity = f"english: lower, {_NON_ALNUM.pattern!r} -> space, split, unicode {unicodedata.unidata_version}"

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        return [_NON_ALNUM.sub(" ", text.lower()).split() for text in texts]


TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {
    "kiwi": KiwiTokenizer,
    "whitespace": WhitespaceTokenizer,
    "english": EnglishTokenizer,
}

_instances: dict[str, Tokenizer] = {}
# Tokens of every text seen, per tokenizer identity: retrieval's k folds and the near-duplicate
# search tokenise the same dialogues again and again in one process.
_token_cache: dict[str, dict[str, list[str]]] = {}


def get_tokenizer(name: str) -> Tokenizer:
    """The shared instance of a tokenizer by name (Kiwi loads its model on first use)."""

    if name not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {name!r}: choose one of {', '.join(sorted(TOKENIZERS))}")
    if name not in _instances:
        _instances[name] = TOKENIZERS[name]()
    return _instances[name]


def tokenize(texts: Sequence[str], tokenizer: str | Tokenizer) -> list[list[str]]:
    """Tokens of each text: for a persistent tokenizer (Kiwi), from the persistent cache where it
    has them, the rest tokenised in one batch (the only time Kiwi's model loads) and stored for the
    next command; a cheap one (english, whitespace) simply tokenises."""
    tokenizer = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    store = token_cache.active_store() if tokenizer.persistent and tokenizer.identity else None
    if store is None:
        return tokenizer.tokenize_many(list(texts))
    distinct = list(dict.fromkeys(texts))
    found = dict(zip(distinct, store.get(tokenizer.identity, distinct)))
    missing = [text for text, tokens in found.items() if tokens is None]
    if missing:
        fresh = tokenizer.tokenize_many(missing)
        store.put(tokenizer.identity, missing, fresh)
        found.update(zip(missing, fresh))
    return [found[text] for text in texts]


def cached_tokens(texts: Sequence[str], tokenizer: str | Tokenizer) -> list[list[str]]:
    """`tokenize`, with each distinct text's tokens also kept in this process (the lists are
    shared: do not change them)."""
    tokenizer = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    cache = _token_cache.setdefault(tokenizer.identity or f"{tokenizer.name}@{id(tokenizer)}", {})
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    if missing:
        cache.update(zip(missing, tokenize(missing, tokenizer)))
    return [cache[t] for t in texts]
