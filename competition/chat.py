"""A client for OpenAI-compatible chat endpoints (/v1/chat/completions: vLLM, OpenAI, ...).

Requests run on a few threads with retries and exponential backoff. Every finished request is
appended to a JSONL cache at once, keyed by the request, so a killed job resumes where it stopped.
The key is read from an environment variable and never written anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Endpoint:
    base_url: str = "http://127.0.0.1:8000/v1"  # endpoint root; /chat/completions is appended
    model: str = ""  # model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("" = send none)
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 5  # retries of a failed request (429, 5xx, timeouts)
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 120.0  # seconds per request


class ChatClient:
    """Sends chat requests; `complete_many(bodies)` returns one content string per body."""

    def __init__(self, endpoint: Endpoint, cache_path: Path, label: str = "api"):
        self.endpoint = endpoint
        self.cache_path = Path(cache_path)
        self.label = label
        self._lock = threading.Lock()
        self.stats: dict = {}

    def headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.endpoint.api_key_env:
            key = os.environ.get(self.endpoint.api_key_env, "")
            if not key:
                raise ConfigError(f"{self.label}: environment variable {self.endpoint.api_key_env} is empty: "
                                  "export the key, or set api_key_env = \"\" for an endpoint without one")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def body(self, messages: list[dict], **options) -> dict:
        return {"model": self.endpoint.model, "messages": messages, **options}

    def cache_key(self, body: dict) -> str:
        text = json.dumps({"url": self.endpoint.base_url, **body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def load_cache(self) -> dict[str, str]:
        cache: dict[str, str] = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write
                cache[entry["key"]] = entry["content"]
        return cache

    def post(self, body: dict, headers: dict) -> str:
        url = self.endpoint.base_url.rstrip("/") + "/chat/completions"
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        delay = self.endpoint.backoff
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.endpoint.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"].get("content") or ""
            except urllib.error.HTTPError as error:
                if error.code not in _RETRY_STATUS or attempt >= self.endpoint.max_retries:
                    detail = error.read().decode("utf-8", "replace")[:200]
                    raise ConfigError(f"{self.label}: {url} answered HTTP {error.code} ({detail}): check base_url, "
                                      f"model and the key in ${self.endpoint.api_key_env}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt >= self.endpoint.max_retries:
                    raise ConfigError(f"{self.label}: cannot reach {url} ({error}): is the server up? "
                                      "Finished requests are cached; re-run to resume") from None
            attempt += 1
            time.sleep(delay)
            delay *= 2

    def complete_many(self, bodies: list[dict]) -> list[str]:
        """Contents for `bodies`, from the cache where finished before, else from the endpoint."""
        from tqdm.auto import tqdm

        if not self.endpoint.model:
            raise ConfigError(f"{self.label}: needs model = \"NAME\" (the model the endpoint serves)")
        keys = [self.cache_key(body) for body in bodies]
        cache = self.load_cache()
        todo = sorted({k: b for k, b in zip(keys, bodies) if k not in cache}.items())
        self.stats = {"requests": len(set(keys)), "from_cache": len(set(keys)) - len(todo), "sent": len(todo)}
        if todo:
            headers = self.headers()
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)

            def run(key: str, body: dict) -> None:
                content = self.post(body, headers)
                with self._lock:
                    cache[key] = content
                    with open(self.cache_path, "a", encoding="utf-8") as log:
                        log.write(json.dumps({"key": key, "content": content}, ensure_ascii=False) + "\n")

            with ThreadPoolExecutor(max_workers=max(1, self.endpoint.concurrency)) as pool:
                futures = [pool.submit(run, key, body) for key, body in todo]
                for future in tqdm(as_completed(futures), total=len(futures), desc=self.label, unit="req",
                                   file=sys.stderr, leave=False):
                    future.result()
        return [cache[key] for key in keys]
