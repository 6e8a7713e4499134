"""The api kind against a real OpenAI-compatible HTTP server on 127.0.0.1 (started in the test)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from competition.candidates.api import ApiCandidate, Params
from competition.errors import ConfigError
from tiny_models import run_through_cli

KEY = "sk-test-secret-123"


class FakeServer:
    """/v1/chat/completions answering the dialogue's first line; fails the first `fail_first` calls."""

    def __init__(self, fail_first: int = 0, empty: bool = False):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.empty = empty
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    failing = len(server.requests) <= server.fail_first
                if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": "bad key"})
                if failing:
                    return self._send(500, {"error": "try again"})
                dialogue = body["messages"][-1]["content"].split("대화:\n", 1)[1]
                content = "" if server.empty else f"<think>x</think>요약: {dialogue.splitlines()[0]}"
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _send(self, status, payload):
                data = json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(**kwargs):
        servers.append(FakeServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", KEY)


def params(url, **overrides):
    return Params(**{"base_url": url, "model": "tiny", "api_key_env": "TEST_API_KEY", "concurrency": 2,
                     "backoff": 0.01, **overrides})


def test_predicts_every_row_retrying_a_500(server_factory, korean_rows, tmp_path):
    server = server_factory(fail_first=1)
    candidate = ApiCandidate("api", params(server.url), tmp_path / "work")
    rows = korean_rows.head(4)
    summaries = candidate.predict(rows)
    assert summaries == [d.splitlines()[0] for d in rows["dialogue"]]
    assert len(server.requests) == 5  # 4 rows + 1 retry
    cache = (tmp_path / "work" / "api_cache.jsonl").read_text(encoding="utf-8")
    assert len(cache.splitlines()) == 4
    assert KEY not in cache and KEY not in json.dumps(candidate.report)


def test_resumes_from_cached_rows(server_factory, korean_rows, tmp_path):
    server = server_factory()
    ApiCandidate("api", params(server.url), tmp_path / "work").predict(korean_rows.head(2))
    assert len(server.requests) == 2
    candidate = ApiCandidate("api", params(server.url), tmp_path / "work")  # a re-run after a kill
    summaries = candidate.predict(korean_rows.head(5))
    assert len(server.requests) == 5  # only the 3 unfinished rows were sent
    assert candidate.report["from_cache"] == 2 and len(summaries) == 5


def test_few_shot_examples_come_from_training_rows(server_factory, korean_rows, tmp_path):
    server = server_factory()
    candidate = ApiCandidate("api", params(server.url, few_shot=1), tmp_path / "work")
    candidate.fit(korean_rows.head(6), fold=0)
    candidate.predict(korean_rows.tail(2))
    messages = server.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] in set(korean_rows.head(6)["summary"])


def test_empty_answer_falls_back_to_lead(server_factory, korean_rows, tmp_path):
    server = server_factory(empty=True)
    candidate = ApiCandidate("api", params(server.url), tmp_path / "work")
    summaries = candidate.predict(korean_rows.head(1))
    assert summaries[0].startswith("#Person1#:") and candidate.report["empty_to_lead"] == 1


def test_bad_key_and_missing_key_are_user_errors(server_factory, korean_rows, tmp_path, monkeypatch):
    server = server_factory()
    monkeypatch.setenv("TEST_API_KEY", "wrong")
    with pytest.raises(ConfigError, match="HTTP 401"):
        ApiCandidate("api", params(server.url), tmp_path / "work").predict(korean_rows.head(1))
    monkeypatch.delenv("TEST_API_KEY")
    with pytest.raises(ConfigError, match="TEST_API_KEY is empty"):
        ApiCandidate("api", params(server.url), tmp_path / "work").predict(korean_rows.head(1))


def test_api_kind_through_competition_run(cli, korean_workspace, server_factory):
    server = server_factory(fail_first=1)
    runs = run_through_cli(cli, korean_workspace, "remote", (
        f'kind = "api"\nbase_url = "{server.url}"\nmodel = "tiny"\napi_key_env = "TEST_API_KEY"\n'
        'backoff = 0.01\n'))
    assert KEY not in (runs / "fold_0" / "meta.json").read_text() and KEY not in (runs / "meta.json").read_text()
