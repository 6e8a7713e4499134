"""The persistent token cache: every text's tokens (and every scored pair's ROUGE, metric.py) are
computed once per workspace, not once per command.

Kiwi reads 650-1,200 Korean dialogues a second on 2 cores and takes seconds to load, so `cv`,
`ensemble`, `submit` and `diff` spent most of their time tokenising and scoring what the last
command had already done. Values are kept in runs/.cache/tokens.sqlite (sqlite in WAL mode: readers never
wait, writers of parallel processes take turns), keyed by a 128-bit hash of an identity (the
tokenizer's name, version and options; for scores also the convention and the scoring code) and
the content, so a changed tokenizer or metric can never be answered with old values. The file is
bounded by [metric] cache_mb (least recently used entries evicted). A file that is not ours or is
damaged is deleted and rebuilt with one warning line: the cache only ever saves time.

The CLI points this process (and, through COMPETITION_TOKEN_CACHE, the processes it starts: Ray
tasks, executors) at the workspace; a library user without a workspace gets no persistent cache
unless they call `use_workspace` (tokens are then cached in memory per process only).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

CACHE_FILE = Path(".cache") / "tokens.sqlite"  # under the workspace's runs/
ENVIRONMENT = "COMPETITION_TOKEN_CACHE"  # "MB:PATH", inherited by child processes
APPLICATION_ID = 0x544F4B53  # "TOKS" in the sqlite header: a file of ours
FORMAT = 2  # PRAGMA user_version; another value is rebuilt
SEPARATOR = "\x1f"  # between tokens in a stored entry
BUSY_SECONDS = 60.0  # a writer waits this long for another process's write to finish
CHUNK = 2_000  # keys per SELECT (sqlite allows 32,766 parameters; ~2k is fastest here)
TOUCH_SECONDS = 3_600  # a hit older than this is stamped again (LRU without a write per hit)
EVICT_TO = 0.8  # when over cache_mb, evict down to this share of it


def _now() -> int:
    return int(time.time())


def encode(tokens: Sequence[str]) -> str | None:
    """Tokens as one stored string; None for lists it could not give back exactly (a token that
    is empty or holds the separator), which are then simply not stored."""
    if "" in tokens:
        return None
    joined = SEPARATOR.join(tokens)
    return joined if joined.count(SEPARATOR) == max(len(tokens) - 1, 0) else None


def decode(stored: str) -> list[str]:
    return stored.split(SEPARATOR) if stored else []


@contextmanager
def _transaction(db: sqlite3.Connection, mode: str = "") -> Iterator[None]:
    """BEGIN [IMMEDIATE] ... COMMIT, rolled back on any error (which is raised as it was)."""
    db.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # a damaged file: the error being raised says more
        raise
    db.execute("COMMIT")


def cut_short(path: Path, recheck_seconds: float = 0.2) -> str | None:
    """Why `path` is a cut file (shorter than its own header says: a full disk, a half copy), or
    None. Read from the file's bytes, not through sqlite (which counts the pages of a WAL), only
    while no writer is at work (no -wal or -journal beside it), and seen twice `recheck_seconds`
    apart: a file another process is creating or checkpointing this instant is not cut."""
    said = None
    for attempt in range(2):
        if attempt:
            time.sleep(recheck_seconds)
        busy = [Path(f"{path}{suffix}") for suffix in ("-wal", "-journal")]
        if any(beside.exists() for beside in busy):
            return None
        try:
            with open(path, "rb") as file:
                header = file.read(100)
            size = path.stat().st_size
        except OSError:
            return None
        # The header's page count is valid only when the change counter matches version-valid-for.
        if len(header) < 100 or not header.startswith(b"SQLite format 3\x00") or header[24:28] != header[92:96]:
            return None
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        expected = page_size * int.from_bytes(header[28:32], "big")
        if size >= expected or any(beside.exists() for beside in busy):
            return None
        said = f"file is {size} bytes, its header says {expected}"
    return said


class TokenStore:
    """One sqlite file of values (tokens, pair scores); lookups and writes are batched (one query
    per CHUNK keys, one transaction per write)."""

    def __init__(self, path: str | Path, limit_mb: float):
        self.path = Path(path)
        self.limit_bytes = int(limit_mb * 2 ** 20)
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()  # a forked child must not use its parent's connection
        self._lock = threading.Lock()
        self._broken = False  # rebuilding failed too: run without the cache

    # -- opening and rebuilding -------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            cut = cut_short(self.path)
            if cut:
                raise sqlite3.DatabaseError(cut)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; a power cut may drop the last write
            if self._stamp(db) != (APPLICATION_ID, FORMAT):
                db.execute("BEGIN IMMEDIATE")  # one process creates the table, the others wait and see it
                stamp = self._stamp(db)
                if stamp == (0, 0) and not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    # value: tokens (text) or a pair's ROUGE scores (bytes, metric.py)
                    db.execute("CREATE TABLE entries (key INTEGER PRIMARY KEY, check_ INTEGER NOT NULL, "
                               "value NOT NULL, used INTEGER NOT NULL)")
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {FORMAT}")
                    db.execute("COMMIT")
                else:
                    db.execute("ROLLBACK")
                    if stamp != (APPLICATION_ID, FORMAT):
                        raise sqlite3.DatabaseError(f"not a token cache of this version (application_id "
                                                    f"{stamp[0]:#x}, format {stamp[1]})")
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _stamp(db: sqlite3.Connection) -> tuple[int, int]:
        return db.execute("PRAGMA application_id").fetchone()[0], db.execute("PRAGMA user_version").fetchone()[0]

    def _forget(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _run(self, work):
        """`work(db)` on the open file. A damaged or foreign file is deleted and rebuilt (one warning
        line) and `work` retried; when that fails too (a read-only folder, a full disk) the cache is
        off for this process (one warning line). Tokens are then computed as without a cache."""
        if self._broken:
            return None
        with self._lock:
            if self._pid != os.getpid():
                self._db, self._pid = None, os.getpid()  # the parent's: left alone, not closed here
            damaged: Exception | None = None
            for attempt in range(2):
                try:
                    if self._db is None:
                        self._db = self._connect()
                    result = work(self._db)
                    if damaged is not None:
                        print(f"warning: token cache {self.path} was unusable ({damaged}): deleted and rebuilt",
                              file=sys.stderr)
                    return result
                except sqlite3.OperationalError as error:
                    if "locked" in str(error):
                        return None  # another writer held the file for BUSY_SECONDS: skip, nothing is wrong
                    failure: Exception = error
                except (sqlite3.DatabaseError, OSError) as error:
                    failure = error
                self._forget()
                if attempt == 0 and isinstance(failure, sqlite3.DatabaseError):
                    try:
                        for suffix in ("", "-wal", "-shm"):
                            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                        damaged = failure
                        continue
                    except OSError as error:
                        failure = error
                break
            print(f"warning: token cache {self.path} cannot be used ({failure}): running without it",
                  file=sys.stderr)
            self._broken = True
            return None

    def close(self) -> None:
        with self._lock:
            self._forget()

    # -- entries ----------------------------------------------------------------------------
    @staticmethod
    def keys(identity: str, contents: Sequence[str]) -> list[tuple[int, int]]:
        """Per content: (key, check), the two signed 64-bit halves of blake2b(identity, content)."""
        salt = hashlib.blake2b(identity.encode("utf-8"), digest_size=32).digest()
        out = []
        for content in contents:
            digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16, key=salt).digest()
            out.append((int.from_bytes(digest[:8], "little", signed=True),
                        int.from_bytes(digest[8:], "little", signed=True)))
        return out

    def get_values(self, identity: str, contents: Sequence[str]) -> list[str | bytes | None]:
        """The stored value of each content under `identity`, None where there is none."""
        keys = self.keys(identity, contents)

        def read(db: sqlite3.Connection) -> dict[int, tuple[int, int, str | bytes, int]]:
            found: dict[int, tuple[int, int, str | bytes, int]] = {}  # key -> (key, check, value, used)
            wanted = list(dict.fromkeys(key for key, _ in keys))
            with _transaction(db):  # one snapshot for every chunk
                for start in range(0, len(wanted), CHUNK):
                    part = wanted[start:start + CHUNK]
                    query = f"SELECT key, check_, value, used FROM entries WHERE key IN ({','.join('?' * len(part))})"
                    found.update({row[0]: row for row in db.execute(query, part).fetchall()})
            now = _now()
            stale = [key for key, (_, _, _, used) in found.items() if used < now - TOUCH_SECONDS]
            if stale:
                try:
                    with _transaction(db, "IMMEDIATE"):
                        db.executemany("UPDATE entries SET used = ? WHERE key = ?", ((now, key) for key in stale))
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error):
                        raise  # held by another writer for BUSY_SECONDS: stamped next time
            return found

        found = self._run(read) or {}
        out: list[str | bytes | None] = []
        for key, check in keys:
            entry = found.get(key)
            out.append(entry[2] if entry is not None and entry[1] == check else None)
        return out

    def put_values(self, identity: str, contents: Sequence[str], values: Sequence[str | bytes | None]) -> None:
        """Store each content's value (None: skipped; a content stored by another process meanwhile
        is replaced by the same value), then evict the least recently used entries past the limit."""
        now = _now()
        rows = [(key, check, value, now) for (key, check), value in zip(self.keys(identity, contents), values)
                if value is not None]
        if not rows:
            return
        rows.sort(key=lambda row: row[0])  # in key order each b-tree page is written once: ~30% faster

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db, "IMMEDIATE"):
                db.executemany("INSERT OR REPLACE INTO entries (key, check_, value, used) VALUES (?, ?, ?, ?)", rows)
            self._evict(db)

        self._run(write)

    def get(self, identity: str, texts: Sequence[str]) -> list[list[str] | None]:
        """Stored tokens of each text by the tokenizer of this identity, None where there are none."""
        return [None if stored is None else decode(stored) for stored in self.get_values(identity, texts)]

    def put(self, identity: str, texts: Sequence[str], tokens: Sequence[Sequence[str]]) -> None:
        """Store the tokens of texts (lists that would not come back exactly are skipped)."""
        self.put_values(identity, texts, [encode(t) for t in tokens])

    def size_bytes(self, db: sqlite3.Connection) -> int:
        """Bytes of pages in use (free pages of evicted entries are reused, not counted)."""
        page_size, pages, free = (db.execute(f"PRAGMA {name}").fetchone()[0]
                                  for name in ("page_size", "page_count", "freelist_count"))
        return (pages - free) * page_size

    def _evict(self, db: sqlite3.Connection) -> None:
        """Past the limit, delete the least recently used entries down to EVICT_TO of it (entries
        differ in size, tokens to whole lists of scores: a few rounds at most)."""
        for _ in range(8):
            used = self.size_bytes(db)
            if used <= self.limit_bytes:
                return
            with _transaction(db, "IMMEDIATE"):
                count = db.execute("SELECT count(*) FROM entries").fetchone()[0]
                if not count:
                    return
                drop = max(1, int(count * (1 - EVICT_TO * self.limit_bytes / used)))
                db.execute("DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY used LIMIT ?)", (drop,))

    def stats(self) -> dict:
        """Entries and bytes in use (for reports and tests)."""
        return self._run(lambda db: {"entries": db.execute("SELECT count(*) FROM entries").fetchone()[0],
                                     "bytes": self.size_bytes(db)}) or {"entries": 0, "bytes": 0}


_store: TokenStore | None = None
_store_source: str | None = None  # the ENVIRONMENT value _store was made from


def setting(runs_dir: str | Path | None, cache_mb: float) -> str:
    """The ENVIRONMENT value for a workspace's runs folder ("0:" = no persistent cache)."""
    return f"{cache_mb}:{Path(runs_dir).resolve() / CACHE_FILE}" if runs_dir and cache_mb > 0 else "0:"


def use_workspace(runs_dir: str | Path | None, cache_mb: float) -> None:
    """Keep tokens in RUNS_DIR/.cache/tokens.sqlite, at most cache_mb MB (0 or no folder: no
    persistent cache), in this process and the processes it starts from now on."""
    os.environ[ENVIRONMENT] = setting(runs_dir, cache_mb)


@contextmanager
def workspace(runs_dir: str | Path | None, cache_mb: float) -> Iterator[None]:
    """`use_workspace` for the duration of a block (a command), then the setting before it."""
    previous = os.environ.get(ENVIRONMENT)
    use_workspace(runs_dir, cache_mb)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = previous


def active_store() -> TokenStore | None:
    """The store this process is pointed at (use_workspace, or inherited), None for none."""
    global _store, _store_source
    value = os.environ.get(ENVIRONMENT, "0:")
    if value != _store_source:
        if _store is not None:
            _store.close()
        limit, _, path = value.partition(":")
        try:
            _store = TokenStore(path, float(limit)) if path and float(limit) > 0 else None
        except ValueError:  # a malformed inherited value: no persistent cache
            _store = None
        _store_source = value
    return _store
