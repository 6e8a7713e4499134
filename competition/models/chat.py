"""A client for OpenAI-compatible chat endpoints (vLLM, OpenAI, any gateway), on the openai SDK.

`concurrency` requests are in flight at once (AsyncOpenAI, one worker per slot). Every outcome is
classified: transient ones (429, 5xx, timeouts, resets, cut bodies) are retried with exponential
backoff, honouring Retry-After; permanent ones (other 4xx, a body that is still not a chat
completion after its retries) stop the queue at once, as does a run of `concurrency x 2` requests
that all failed after their retries, so a dead endpoint shows its error in seconds, not hours.
Only answers that are non-empty after cleaning are cached (one JSONL line each, appended at once),
so a killed or stopped run resumes where it left off and a failure is never taken for an answer.
The key is read from the environment and never written anywhere.
"""
from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..errors import CompetitionError
from .generation import clean_output
from .params import Composed, at_least

try:
    import fcntl
except ImportError:  # Windows: appends stay single writes, without a lock
    fcntl = None

MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is cut to this (the wait is announced either way)
_TRANSIENT_STATUS = {408, 409, 425, 429}  # and every 5xx
_NO_KEY = "no-key"  # the SDK insists on a key; the Authorization header is then left out of requests


@dataclass
class Endpoint(Composed):
    """Where and how the chat requests go: the api kind's endpoint part, and augment's endpoint."""

    base_url: str = "http://127.0.0.1:8000/v1"  # endpoint root; /chat/completions is appended
    model: str = ""  # model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("" or unset = send none)
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 5  # retries of a transient failure (429, 5xx, timeouts, resets)
    backoff: float = 1.0  # seconds before the first retry, doubling each time (a Retry-After wins)
    timeout: float = 120.0  # seconds per request

    def check(self) -> list[str]:
        problems = [] if self.base_url.startswith(("http://", "https://")) else [
            f"base_url = {self.base_url!r} should be the API root, e.g. http://127.0.0.1:8000/v1"]
        problems += at_least(self, ("concurrency",), 1) + at_least(self, ("max_retries", "backoff"), 0)
        if self.timeout <= 0:
            problems.append(f"timeout = {self.timeout} should be more than 0 seconds")
        return problems

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


class EndpointError(CompetitionError):
    """The endpoint refused or failed: one line with the status, the URL and what to do."""


@dataclass
class Failure:
    """One failed attempt. `retry`: another attempt may succeed; `stops`: when its retries are
    spent it stops the queue at once (otherwise only a run of such failures does)."""

    what: str  # "HTTP 503 (overloaded)", "timed out after 120 s", ...
    hint: str
    retry: bool
    stops: bool
    retry_after: float | None = None


@dataclass
class Answer:
    raw: str  # the content as the endpoint sent it (cached as is: a better cleaner applies on re-runs)
    finish_reason: str | None
    text: str  # after cleaning


@dataclass
class ChatReport:
    """What one `complete_many` did."""

    requests: int = 0  # distinct requests asked for
    from_cache: int = 0
    answered: int = 0  # new non-empty answers, now cached
    empty: int = 0  # answered empty twice: not cached, asked again on the next run
    failed: int = 0  # transient failures after their retries
    sent: int = 0  # HTTP requests, retries included
    retries: int = 0


def retry_after_seconds(headers) -> float | None:
    """Seconds a 429/503 answer asks to wait (retry-after-ms, or Retry-After in seconds or as a date)."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _detail(text: str, secret: str) -> str:
    """A short, one-line excerpt of an answer body: its error message when it is OpenAI-style JSON."""
    try:
        payload = json.loads(text)
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        text = str(error.get("message") or error) if isinstance(error, dict) else str(error)
    except ValueError:
        pass
    text = " ".join(text.split())[:160]
    return text.replace(secret, "***") if secret else text


def parse_completion(text: str) -> tuple[str, str | None] | None:
    """(content, finish_reason) of an OpenAI chat completion body, or None when it is not one
    (the SDK would hand back a bare string or an object without choices)."""
    try:
        payload = json.loads(text)
        choice = payload["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if content is not None and not isinstance(content, str):
        return None
    return content or "", choice.get("finish_reason")


@contextmanager
def _locked(handle):
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield handle
    finally:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class ResponseCache:
    """Finished answers, one JSON line each ({"key", "content", "finish_reason"}). Every read and
    append holds an exclusive lock, so several processes may share a file; lines a kill cut are
    dropped (the file rewritten in place) when the cache is next loaded."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        entries, kept, rewrite = {}, [], False
        with open(self.path, "r+b") as handle, _locked(handle):
            for line in handle.read().splitlines(keepends=True):
                try:
                    entry = json.loads(line)
                    entries[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    rewrite = True  # a line cut by a kill mid-write
                    continue
                if not line.endswith(b"\n"):
                    line, rewrite = line + b"\n", True
                kept.append(line)
            if rewrite:
                handle.seek(0)
                handle.writelines(kept)
                handle.truncate()
        return entries

    def append(self, entry: dict) -> None:
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle, _locked(handle):
            if handle.seek(0, os.SEEK_END):
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # another writer was killed mid-line: keep ours whole
                    line = b"\n" + line
            handle.write(line)  # one write: a kill leaves at most this line cut


def _stderr_line(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def _run(coroutine):
    """asyncio.run, also from inside a running loop (a notebook): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class _Progress:
    """The counts of one run, shared by its workers (one event loop: no locks needed)."""

    window: int  # concurrency x 2: that many failed requests in a row stop the queue
    done: int = 0
    empty: int = 0
    failed: int = 0
    retrying: int = 0
    sent: int = 0
    retries: int = 0
    error: Failure | None = None  # what stopped the queue
    last_failure: Failure | None = None
    recent: deque = field(init=False)  # per finished request: did it fail after its retries?
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)


class ChatClient:
    """Sends chat requests; `complete_many(bodies)` returns one cleaned answer per body ("" for
    one that came back empty twice) and leaves what it did in `report`."""

    def __init__(self, endpoint: Endpoint, cache_path: Path, label: str = "api",
                 clean: Callable[[str, bool], str] = clean_output, refresh: bool = False,
                 echo: Callable[[str], None] = _stderr_line):
        self.endpoint = endpoint
        self.cache = ResponseCache(cache_path)
        self.label = label
        self.clean = clean  # (raw content, cut by max_tokens) -> text; "" counts as empty
        self.refresh = refresh  # re-send requests that are cached
        self.echo = echo
        self.report = ChatReport()
        self._announced: dict[str, float] = {}

    def body(self, messages: list[dict], **options) -> dict:
        return {"model": self.endpoint.model, "messages": messages, **options}

    def cache_key(self, body: dict) -> str:
        text = json.dumps({"url": self.endpoint.base_url, **body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def api_key(self) -> str:
        """The key from the environment; "" (with a one-line note) for a server that takes none."""
        name = self.endpoint.api_key_env
        key = os.environ.get(name, "") if name else ""
        if not key:
            note = (f"${name} is not set: sending no key (fine for a server without one)" if name
                    else "api_key_env is empty: sending no key")
            self._announce(note, once=True)
        return key

    def _key_hint(self, key: str) -> str:
        name = self.endpoint.api_key_env
        if not name:
            return "no key was sent (api_key_env is empty): set api_key_env to the variable holding the key"
        if not key:
            return f"no key was sent (${name} is not set): export the key"
        return f"check the key in ${name}"

    def _announce(self, line: str, once: bool = False, every: float = 0.0) -> None:
        """Print `line` with the label; `once` per client, or at most once per `every` seconds."""
        now = time.monotonic()
        last = self._announced.get(line)
        if last is not None and (once or now - last < every):
            return
        self._announced[line] = now
        self.echo(f"{self.label}: {line}")

    def _entry_text(self, entry: dict) -> str:
        return self.clean(entry.get("content") or "", entry.get("finish_reason") == "length")

    def complete_many(self, bodies: list[dict]) -> list[str]:
        """Answers for `bodies`, from the cache where finished before, else from the endpoint.
        Raises EndpointError (after caching what finished) when the queue had to stop."""
        if not self.endpoint.model:
            raise EndpointError(f"{self.label}: needs model = \"NAME\" (the model the endpoint serves)")
        keys = [self.cache_key(body) for body in bodies]
        cached = {} if self.refresh else self.cache.load()
        texts = {key: self._entry_text(entry) for key, entry in cached.items()}
        texts = {key: text for key, text in texts.items() if text}  # an empty answer is asked again
        todo = sorted({k: b for k, b in zip(keys, bodies) if k not in texts}.items())
        self.report = ChatReport(requests=len(set(keys)), from_cache=len(set(keys)) - len(todo))
        if todo:
            progress = _run(self._send_all(todo, texts))
            self.report = replace(self.report, answered=progress.done, empty=progress.empty, failed=progress.failed,
                                  sent=progress.sent, retries=progress.retries)
            self._raise_if_stopped(progress)
        return [texts.get(key, "") for key in keys]

    def _raise_if_stopped(self, progress: _Progress) -> None:
        done = self.report.from_cache + progress.done
        resume = f"{done} of {self.report.requests} done, cached; re-run to resume"
        failure = progress.error
        if failure is None and progress.failed:
            failure = progress.last_failure
        if failure is None:
            return
        retries = f" after {self.endpoint.max_retries} retries" if failure.retry and self.endpoint.max_retries else ""
        count = "" if progress.error else f"{progress.failed} request(s) failed; last: "
        raise EndpointError(f"{self.label}: {count}{self.endpoint.url} {failure.what}{retries}: {failure.hint}; {resume}")

    async def _send_all(self, todo: list[tuple[str, dict]], texts: dict[str, str]) -> _Progress:
        from openai import AsyncOpenAI

        endpoint = self.endpoint
        key = self.api_key()
        progress = _Progress(window=2 * endpoint.concurrency)
        queue = deque(todo)
        bar = tqdm(total=len(todo), desc=self.label, unit="req", file=sys.stderr, leave=False)

        def show() -> None:
            bar.set_postfix_str(f"done {progress.done}, empty {progress.empty}, failed {progress.failed}, "
                                f"retrying {progress.retrying}", refresh=False)

        async def worker(client) -> None:
            while queue and not progress.stopped.is_set():
                request_key, body = queue.popleft()
                outcome = await self._complete_one(client, body, key, progress, show)
                if outcome is None:
                    continue  # the queue stopped while this one waited to retry
                if isinstance(outcome, Answer):
                    if outcome.text:
                        self.cache.append({"key": request_key, "content": outcome.raw,
                                           "finish_reason": outcome.finish_reason})
                        texts[request_key] = outcome.text
                        progress.done += 1
                    else:
                        progress.empty += 1
                    progress.recent.append(False)
                elif outcome.stops:
                    progress.error = outcome
                    progress.stopped.set()
                else:
                    progress.failed += 1
                    progress.last_failure = outcome
                    progress.recent.append(True)
                    if len(progress.recent) == progress.window and all(progress.recent):
                        # A dead endpoint: every request would spend its retries the same way.
                        progress.error = replace(outcome, hint=f"{outcome.hint} (the last {progress.window} "
                                                               f"requests all failed, so the rest were not sent)")
                        progress.stopped.set()
                bar.update(1)
                show()

        client = AsyncOpenAI(base_url=endpoint.base_url, api_key=key or _NO_KEY, max_retries=0,
                             timeout=endpoint.timeout)
        try:
            async with client:
                await asyncio.gather(*(worker(client) for _ in range(min(endpoint.concurrency, len(todo)))))
        finally:
            bar.close()
        return progress

    async def _complete_one(self, client, body: dict, key: str, progress: _Progress, show) -> Answer | Failure | None:
        """One request with its retries: an answer (retried once when empty), a failure whose
        retries are spent, or None when the queue stopped meanwhile."""
        attempt, asked_again = 0, False
        while True:
            progress.sent += 1
            outcome = await self._attempt(client, body, key)
            if isinstance(outcome, Answer):
                if outcome.text or asked_again:
                    return outcome
                asked_again = True
                continue
            if not outcome.retry or attempt >= self.endpoint.max_retries:
                return outcome
            attempt += 1
            delay = self.endpoint.backoff * 2 ** (attempt - 1)
            if outcome.retry_after is not None:
                delay = min(outcome.retry_after, MAX_RETRY_AFTER)
                self._announce(f"{self.endpoint.url} {outcome.what}: waiting {delay:g} s as its Retry-After asks",
                               every=1.0)
            else:
                self._announce(f"{self.endpoint.url} {outcome.what}: retrying with backoff "
                               f"(up to {self.endpoint.max_retries} retries)", once=True)
            progress.retrying += 1
            progress.retries += 1
            show()
            try:
                await asyncio.wait_for(progress.stopped.wait(), delay)
                return None  # stopped while waiting: this request is left for the next run
            except asyncio.TimeoutError:
                pass
            finally:
                progress.retrying -= 1

    async def _attempt(self, client, body: dict, key: str) -> Answer | Failure:
        import httpx2
        import openai

        endpoint = self.endpoint
        overload = "the server is overloaded or down: lower concurrency, or wait and re-run"
        headers = None if key else {"Authorization": openai.omit}
        try:
            # The SDK's raw request (its README's way to custom requests): the body goes as cached,
            # unchanged, and skipping the typed create's per-request transform saves a third of the
            # client's CPU, which counts at 100+ requests/s. Errors, timeouts and auth are the SDK's.
            raw = await client.post("/chat/completions", cast_to=httpx2.Response, body=body,
                                    options={"headers": headers} if headers else {})
        except openai.APITimeoutError:
            return Failure(f"timed out after {endpoint.timeout:g} s", f"{overload}; or raise timeout",
                           retry=True, stops=False)
        except openai.APIConnectionError as error:
            cause = " ".join(str(error.__cause__ or error).split())[:160]
            return Failure(f"connection failed ({cause})", "is the server up and reachable at base_url?",
                           retry=True, stops=False)
        except openai.APIStatusError as error:
            status = error.status_code
            what = f"answered HTTP {status} ({_detail(error.response.text, key)})"
            if status in _TRANSIENT_STATUS or status >= 500:
                return Failure(what, overload, retry=True, stops=False,
                               retry_after=retry_after_seconds(error.response.headers))
            if status in (401, 403):
                hint = self._key_hint(key)
            elif status == 404:
                hint = (f"check model = {endpoint.model!r} (GET {endpoint.base_url.rstrip('/')}/models lists the "
                        f"served ones) and base_url (the API root, usually ending in /v1)")
            else:
                hint = "the server refused the request: check model, max_tokens and temperature against what it accepts"
            return Failure(what, hint, retry=False, stops=True)
        parsed = parse_completion(raw.text)
        if parsed is None:
            kind = raw.headers.get("content-type", "no content type").split(";")[0]
            return Failure(f"answered HTTP {raw.status_code} with a body that is not a chat completion "
                           f"({kind}: {_detail(raw.text, key)})",
                           "is base_url the API root of an OpenAI-compatible server (usually ending in /v1)?",
                           retry=True, stops=True)
        content, finish_reason = parsed
        return Answer(content, finish_reason, self.clean(content, finish_reason == "length"))
