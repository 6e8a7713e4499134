"""The persistent token cache: exact tokens, keyed by the tokenizer's identity, safe with parallel
writers, rebuilt when damaged, bounded, and never a change in any score."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from competition.errors import ConfigError
from competition.text import metric, token_cache
from competition.text.metric import MetricConfig, RougeScorer
from competition.text.tokenizers import KiwiTokenizer, cached_tokens, get_tokenizer, tokenize
from competition.workspace.config import load_config
from korean_fixture import DIALOGUES

ENGLISH = ["#Person1#: Hello, how are you feeling today?", "I've had trouble breathing lately.",
           "Mr. Smith's phone is #PhoneNumber#; call 555-0199!", "  leading and trailing spaces  "]
ODD = ["", "   ", "tab\tand\nnew line", "unit\x1fseparator inside", "이모지 😀 와 #Address#", "a" * 5000]
KOREAN = [text for row in DIALOGUES for text in row[1:3]]


@pytest.fixture
def store_at(tmp_path, monkeypatch):
    """Point this process at tmp_path/runs/.cache/tokens.sqlite (size in MB); undone afterwards."""
    monkeypatch.setenv(token_cache.ENVIRONMENT, "0:")  # recorded, so restored whatever the test sets

    def point(cache_mb: float = 64) -> token_cache.TokenStore:
        monkeypatch.setenv(token_cache.ENVIRONMENT, token_cache.setting(tmp_path / "runs", cache_mb))
        return token_cache.active_store()

    yield point
    store = token_cache.active_store()
    if store is not None:
        store.close()


class Counting:
    """A tokenizer wrapper that records what it was asked to tokenise (persistent: its tokens are
    stored even where the wrapped tokenizer's are not worth it)."""

    def __init__(self, inner, persistent: bool = True):
        self.inner, self.name, self.identity, self.persistent = inner, inner.name, inner.identity, persistent
        self.asked: list[str] = []

    def tokenize_many(self, texts):
        self.asked.extend(texts)
        return self.inner.tokenize_many(texts)


def fresh_process_view(tmp_path) -> token_cache.TokenStore:
    """A new connection to the cache file, as the next command would open it."""
    return token_cache.TokenStore(tmp_path / "runs" / token_cache.CACHE_FILE, 64)


# -- exact tokens -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, texts", [("kiwi", KOREAN + ODD), ("english", ENGLISH + ODD),
                                         ("whitespace", ENGLISH + KOREAN + ODD)])
def test_cache_returns_exactly_a_fresh_tokenizers_tokens(tmp_path, store_at, name, texts):
    store_at()
    expected = get_tokenizer(name).tokenize_many(texts)
    cold = Counting(get_tokenizer(name))
    assert tokenize(texts, cold) == expected
    assert sorted(cold.asked) == sorted(set(texts))  # each distinct text tokenised once

    warm = Counting(get_tokenizer(name))
    assert tokenize(texts, warm) == expected
    # Everything but the one text whose tokens cannot be stored exactly is answered from the file.
    assert warm.asked == [t for t in dict.fromkeys(texts) if token_cache.encode(expected[texts.index(t)]) is None]
    stored = fresh_process_view(tmp_path).get(get_tokenizer(name).identity, texts)
    assert [s for s in stored if s is not None] == [e for e, s in zip(expected, stored) if s is not None]
    assert sum(s is not None for s in stored) >= len(texts) - 1


def test_a_separator_inside_a_token_is_never_stored_inexactly():
    assert token_cache.encode(["a", "b"]) == "a\x1fb"
    assert token_cache.decode("a\x1fb") == ["a", "b"]
    assert token_cache.encode([]) == "" and token_cache.decode("") == []
    assert token_cache.encode(["a\x1fb"]) is None  # would come back as two tokens
    assert token_cache.encode([""]) is None  # would come back as no token


def test_warm_kiwi_never_loads_the_model(tmp_path, store_at):
    store_at()
    tokenize(KOREAN, get_tokenizer("kiwi"))
    again = KiwiTokenizer()  # as in the next command: a new tokenizer, nothing loaded
    assert tokenize(KOREAN, again) == get_tokenizer("kiwi").tokenize_many(KOREAN)
    assert "_kiwi" not in vars(again), "the Kiwi model was loaded although every text was cached"


# -- keyed by the tokenizer -----------------------------------------------------------------------
def test_a_changed_tokenizer_option_misses(tmp_path, store_at):
    store_at()
    tokenize(KOREAN, get_tokenizer("kiwi"))
    changed = Counting(KiwiTokenizer(integrate_allomorph=False))
    assert changed.identity != get_tokenizer("kiwi").identity
    tokens = tokenize(KOREAN, changed)
    assert sorted(changed.asked) == sorted(set(KOREAN))  # every text missed, and loaded the model
    assert tokens == changed.inner.tokenize_many(KOREAN)
    # Speed-only options key nothing: the same tokens are found.
    assert KiwiTokenizer(num_workers=1).identity == KiwiTokenizer().identity
    # Another tokenizer with a stored text's bytes gets its own entry, never Kiwi's.
    english = Counting(get_tokenizer("english"))
    tokenize(KOREAN[:2], english)
    assert english.asked == KOREAN[:2]


def test_a_new_kiwi_version_misses(monkeypatch):
    import importlib.metadata

    before = KiwiTokenizer().identity
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda package: "99.0" if package == "kiwipiepy" else real(package))
    assert KiwiTokenizer().identity != before
    assert json.loads(KiwiTokenizer().identity)["kiwipiepy"] == "99.0"


def test_no_workspace_means_no_file_and_the_same_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv(token_cache.ENVIRONMENT, "0:")
    monkeypatch.delenv(token_cache.ENVIRONMENT)
    assert token_cache.active_store() is None
    assert tokenize(ENGLISH, "english") == get_tokenizer("english").tokenize_many(ENGLISH)
    token_cache.use_workspace(tmp_path / "runs", 0)  # cache_mb = 0: off
    assert token_cache.active_store() is None
    assert cached_tokens(ENGLISH, "english") == get_tokenizer("english").tokenize_many(ENGLISH)
    assert not (tmp_path / "runs").exists()


# -- parallel writers ------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from competition.text import metric, token_cache
    from competition.text.tokenizers import get_tokenizer
    path, first, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    store = token_cache.TokenStore(path, 64)
    identity = get_tokenizer("whitespace").identity
    texts = [f"text {i} " + " ".join(f"w{i * 7 + j}" for j in range(i % 13)) for i in range(first, first + count)]
    while not go.exists():
        time.sleep(0.001)
    for start in range(0, len(texts), 50):  # many small transactions, interleaved with the other writer
        batch = texts[start:start + 50]
        store.put(identity, batch, [t.split() for t in batch])
    print(len(texts))
""")


def test_two_processes_writing_at_once_lose_and_corrupt_nothing(tmp_path):
    path = tmp_path / "tokens.sqlite"
    go = tmp_path / "go"
    # Overlapping ranges: 0..2999 and 2000..4999, so 1,000 texts are written by both.
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first), "3000", str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for first in (0, 2000)]
    go.touch()
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        assert out.strip() == "3000" and "warning" not in err
    texts = [f"text {i} " + " ".join(f"w{i * 7 + j}" for j in range(i % 13)) for i in range(5000)]
    store = token_cache.TokenStore(path, 64)
    assert store.get(get_tokenizer("whitespace").identity, texts) == [t.split() for t in texts]
    assert store.stats()["entries"] == 5000
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- damaged and foreign files -------------------------------------------------------------------
def filled(tmp_path, count: int = 3000) -> tuple[Path, list[str]]:
    path = tmp_path / "runs" / token_cache.CACHE_FILE
    texts = [f"sentence number {i} " + "word " * (i % 40) for i in range(count)]
    store = token_cache.TokenStore(path, 64)
    store.put(get_tokenizer("whitespace").identity, texts, [t.split() for t in texts])
    store.close()  # the WAL is checkpointed into the file and removed
    assert not Path(f"{path}-wal").exists()
    return path, texts


def test_a_file_another_process_is_writing_is_not_taken_for_a_cut_one(tmp_path, monkeypatch, capfd):
    """A process opens the cache and sees no -wal file, then the writer creates one: sqlite counts
    the WAL's pages against the shorter main file, which reads like a cut file. The check reads
    the file's own header and looks for a writer again, so the file is kept, not deleted as cut."""
    path, texts = filled(tmp_path)
    identity = get_tokenizer("whitespace").identity
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")  # its pages stay in the WAL: the main file is shorter
    writer.execute("BEGIN IMMEDIATE")
    writer.executemany("INSERT OR REPLACE INTO entries (key, check_, value, used) VALUES (?, ?, ?, 0)",
                       [(key + 10 ** 15, key, "x" * 3000, ) for key in range(300)])
    writer.execute("COMMIT")
    wal = Path(f"{path}-wal")
    assert wal.exists() and wal.stat().st_size > path.stat().st_size
    real_exists = Path.exists
    looked = []

    def exists_later(self):  # the first look for the writer's -wal comes just before it is created
        if self == wal and not looked:
            looked.append(self)
            return False
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists_later)
    store = token_cache.TokenStore(path, 64)
    assert store.get(identity, texts) == [t.split() for t in texts]  # nothing was deleted
    store.close()
    writer.close()
    assert looked and "warning" not in capfd.readouterr().err


def test_a_truncated_cache_file_is_rebuilt_with_a_warning(tmp_path, store_at, capfd):
    path, texts = filled(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size // 2)
    store_at()
    tokenizer = Counting(get_tokenizer("whitespace"))
    assert tokenize(texts, tokenizer) == [t.split() for t in texts]
    assert sorted(tokenizer.asked) == sorted(texts)  # nothing was trusted from the cut file
    warnings = [line for line in capfd.readouterr().err.splitlines() if "token cache" in line]
    assert len(warnings) == 1 and "rebuilt" in warnings[0] and str(path) in warnings[0]
    # Rebuilt: the next command finds every text again.
    assert fresh_process_view(tmp_path).get(tokenizer.identity, texts) == [t.split() for t in texts]


@pytest.mark.parametrize("content", ["garbage", "other database", "other format"])
def test_a_foreign_cache_file_is_rebuilt_with_a_warning(tmp_path, store_at, capfd, content):
    path = tmp_path / "runs" / token_cache.CACHE_FILE
    path.parent.mkdir(parents=True)
    if content == "garbage":
        path.write_bytes(b"not sqlite at all " * 500)
    else:
        with sqlite3.connect(path) as db:
            if content == "other database":
                db.execute("CREATE TABLE entries (key INTEGER PRIMARY KEY, check_ INTEGER, value, used INTEGER)")
                db.execute("INSERT INTO entries VALUES (1, 2, 'wrong', 0)")
            else:  # ours, but of another format version
                db.execute(f"PRAGMA application_id = {token_cache.APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {token_cache.FORMAT + 1}")
                db.execute("CREATE TABLE t (x)")
        db.close()
    store_at()
    assert tokenize(ENGLISH, Counting(get_tokenizer("english"))) == get_tokenizer("english").tokenize_many(ENGLISH)
    warnings = [line for line in capfd.readouterr().err.splitlines() if "token cache" in line]
    assert len(warnings) == 1 and "rebuilt" in warnings[0]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == token_cache.APPLICATION_ID
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == len(ENGLISH)
    db.close()


def test_an_unwritable_cache_is_one_warning_and_the_same_tokens(tmp_path, monkeypatch, capfd):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    monkeypatch.setenv(token_cache.ENVIRONMENT, token_cache.setting(blocker, 64))
    for _ in range(3):
        assert tokenize(ENGLISH, Counting(get_tokenizer("english"))) == get_tokenizer("english").tokenize_many(ENGLISH)
    warnings = [line for line in capfd.readouterr().err.splitlines() if "token cache" in line]
    assert len(warnings) == 1 and "running without it" in warnings[0]


# -- bounded -------------------------------------------------------------------------------------
def test_least_recently_used_entries_are_evicted_past_cache_mb(tmp_path, monkeypatch):
    clock = [1_000_000]
    monkeypatch.setattr(token_cache, "_now", lambda: clock[0])
    store = token_cache.TokenStore(tmp_path / "tokens.sqlite", 64)
    identity = get_tokenizer("whitespace").identity

    def batch(label: str) -> list[str]:
        return [f"{label} {i} " + "filler " * 40 for i in range(400)]

    old, recent = batch("old"), batch("recent")
    store.put(identity, old, [t.split() for t in old])
    clock[0] += 10 * token_cache.TOUCH_SECONDS
    store.put(identity, recent, [t.split() for t in recent])
    clock[0] += 10 * token_cache.TOUCH_SECONDS
    assert all(store.get(identity, old))  # read again: now the most recently used
    with sqlite3.connect(store.path) as db:
        store.limit_bytes = store.size_bytes(db)  # full now: the next batch must push entries out
    db.close()
    clock[0] += 10 * token_cache.TOUCH_SECONDS
    newest = batch("newest")
    store.put(identity, newest, [t.split() for t in newest])
    with sqlite3.connect(store.path) as db:
        assert store.size_bytes(db) <= store.limit_bytes
    db.close()
    kept = {label: sum(t is not None for t in store.get(identity, texts))
            for label, texts in (("old", old), ("recent", recent), ("newest", newest))}
    assert kept["newest"] == 400 and kept["old"] > 0
    assert kept["recent"] < kept["old"], kept  # the least recently used went first


# -- config and results --------------------------------------------------------------------------
def test_cache_mb_is_checked_and_documented(tmp_path):
    assert MetricConfig().cache_mb > 0
    path = tmp_path / "competition.toml"
    path.write_text("[metric]\ncache_mb = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[metric\] cache_mb = -1: choose a size in MB"):
        load_config(path)


def test_cache_mb_changes_no_result_hash(tmp_path):
    from competition.workspace.config import parse_config
    from competition.results.provenance import candidate_hash

    raw = {"candidates": {"lead": {"kind": "lead"}}}
    default = parse_config(raw, tmp_path / "competition.toml")
    other = parse_config({**raw, "metric": {"cache_mb": 7}}, tmp_path / "competition.toml")
    assert candidate_hash(default, "lead")[0] == candidate_hash(other, "lead")[0]
    # The hashed settings are those before the cache existed: existing runs stay current.
    assert default.metric.scoring() == {k: v for k, v in dataclasses.asdict(default.metric).items() if k != "cache_mb"}
    changed = parse_config({**raw, "metric": {"convention": "rouge-score"}}, tmp_path / "competition.toml")
    assert candidate_hash(changed, "lead")[0] != candidate_hash(default, "lead")[0]


@pytest.mark.parametrize("convention", ["official", "rouge-score"])
def test_scores_with_and_without_the_cache_are_identical(tmp_path, store_at, shared_data, convention):
    from competition.data.loading import read_split, references

    dev = read_split(shared_data / "dialogsum-ko" / "dev.csv", "dev")
    predictions = [dialogue.split("\n")[0].split(":", 1)[-1] for dialogue in dev["dialogue"]]
    refs = references(dev)
    token_cache.use_workspace(None, 0)
    without = RougeScorer("kiwi", convention).score(predictions, refs)
    store_at()
    cold = RougeScorer("kiwi", convention).score(predictions, refs)
    warm_tokenizer = KiwiTokenizer()
    warm = RougeScorer(warm_tokenizer, convention).score(predictions, refs)
    assert "_kiwi" not in vars(warm_tokenizer)  # every text came from the cache
    for result in (cold, warm):
        assert np.array_equal(result.per_row, without.per_row)
        assert result.final == without.final and repr(result.final) == repr(without.final)


def test_commands_share_the_workspace_cache(cli, korean_workspace, monkeypatch):
    monkeypatch.setenv(token_cache.ENVIRONMENT, "0:")
    # Earlier tests in this process tokenised the same fixture dialogues: with them in the
    # in-process dict, nothing would reach the workspace file (what failed in the full suite).
    monkeypatch.setattr("competition.text.tokenizers._token_cache", {})
    result = cli(["data", "check", "--json"], cwd=korean_workspace)  # Kiwi tokens of every dialogue
    assert result.exit_code == 0, result.output
    path = korean_workspace / "runs" / token_cache.CACHE_FILE
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] > 0
    db.close()
    assert os.environ[token_cache.ENVIRONMENT] == "0:"  # the command's setting ended with it

    path.unlink()
    (korean_workspace / "off.toml").write_text("[metric]\ncache_mb = 0\n", encoding="utf-8")
    result = cli(["data", "check", "--json", "--config", korean_workspace / "off.toml"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert not path.exists()


def test_cheap_tokenizers_are_not_stored_but_their_scores_are(tmp_path, store_at):
    store = store_at()
    assert get_tokenizer("kiwi").persistent and not get_tokenizer("english").persistent
    assert tokenize(ENGLISH, "english") == get_tokenizer("english").tokenize_many(ENGLISH)
    assert store.stats()["entries"] == 0  # a lookup would cost more than the regex
    RougeScorer("english", "official").score_pairs(ENGLISH * 20, ENGLISH[::-1] * 20)
    assert store.stats()["entries"] == 1


# -- pair scores ---------------------------------------------------------------------------------
def test_stored_pair_scores_are_read_back_and_keyed_by_convention_and_code(tmp_path, store_at):
    store = store_at()
    hyps = ["a a b"] + [f"a b c d {i}" for i in range(60)] + ["x y"] * 20
    refs = ["a b"] + [f"a b d {i % 7}" for i in range(60)] + ["x z y"] * 20
    first = RougeScorer("whitespace", "official").score_pairs(hyps, refs)
    assert first[0, 0, 0] == 1.0  # official: distinct unigrams {a, b} on both sides
    identity = json.loads(RougeScorer("whitespace", "official").scores_identity)
    assert identity["metric.py"] == hashlib.sha256(Path(metric.__file__).read_bytes()).hexdigest()
    assert identity["tokens"] == get_tokenizer("whitespace").identity and identity["scores"] == "official"
    entries = store.stats()["entries"]
    # The next command's scorer reads the stored bytes: nothing is tokenised or counted again.
    tokenizer = Counting(get_tokenizer("whitespace"), persistent=False)
    again = RougeScorer(tokenizer, "official").score_pairs(hyps, refs)
    assert tokenizer.asked == [] and np.array_equal(again, first) and again.flags.writeable
    assert store.stats()["entries"] == entries
    # Another list of pairs, or another convention, is computed: never answered with other scores.
    shorter = RougeScorer(tokenizer, "official").score_pairs(hyps[1:], refs[1:])
    assert np.array_equal(shorter, first[1:]) and store.stats()["entries"] == entries + 1  # its own entry
    counted = RougeScorer("whitespace", "rouge-score")
    assert counted.scores_identity != RougeScorer("whitespace", "official").scores_identity
    assert counted.score_pairs(hyps, refs)[0, 0, 0] == pytest.approx(2 / 3)  # counted: 2 of 3 tokens
