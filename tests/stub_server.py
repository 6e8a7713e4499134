"""A local OpenAI-compatible /v1/chat/completions server that misbehaves on purpose (tests, bench).

Each request takes the next mode of `script` (then `default`): "ok", "empty", "null", "think" (a
<think> block before the answer), a status such as "503" or "429 retry-after 1", "html" (an HTML
page with status 200), "badjson", "nochoices", "cut" (the connection closes mid-body), "reset"
(closed before any answer), "hang" (answers nothing until the client gives up) or "length" (an
answer with a dangling last sentence, finish_reason "length"). A 401 echoes the key it got, as
some servers do.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence


@dataclass
class Seen:
    """One request as the server saw it."""

    number: int
    mode: str
    arrived: float  # time.monotonic()
    body: dict
    authorization: str | None
    answered: float = 0.0  # when the server started to answer (after `latency`)
    done: float = 0.0  # when its answer (or failure) was sent


def echo_first_line(body: dict) -> str:
    """The last user message's first line: a stand-in for a summary."""
    return body["messages"][-1]["content"].strip().splitlines()[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 32 clients connecting at once must not overflow the listen backlog


class StubServer:
    def __init__(self, script: Sequence[str] = (), default: str = "ok", latency: float = 0.0,
                 key: str | None = None, answer: Callable[[dict], str] = echo_first_line):
        self.script = list(script)
        self.default = default
        self.latency = latency
        self.key = key  # when set, other keys get 401
        self.answer = answer
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def modes(self) -> list[str]:
        with self.lock:
            return [s.mode for s in self.seen]

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next(self, body: dict, authorization: str | None) -> Seen:
        with self.lock:
            number = len(self.seen)
            mode = self.script[number] if number < len(self.script) else self.default
            if self.key is not None and authorization != f"Bearer {self.key}":
                mode = "401"
            seen = Seen(number, mode, time.monotonic(), body, authorization)
            self.seen.append(seen)
        return seen

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real server

            def setup(self):
                super().setup()
                # Headers and body go out as two writes: without this, Nagle holds the body back
                # until the client's delayed ACK (~40 ms a request), as no real server does.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = server._next(body, self.headers.get("Authorization"))
                if server.latency:
                    server.closing.wait(server.latency)
                seen.answered = time.monotonic()
                try:
                    self._answer(seen.mode, body)
                finally:
                    seen.done = time.monotonic()

            def _answer(self, mode: str, body: dict):
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                words = mode.split()
                if mode == "401":
                    message = f"Incorrect API key provided: {self.headers.get('Authorization')}"
                    return self._json(401, {"error": {"message": message}})
                if words[0].isdigit():
                    headers = {"Retry-After": words[2]} if words[1:2] == ["retry-after"] else {}
                    return self._json(int(words[0]), {"error": {"message": f"stub says {words[0]}"}}, headers)
                if mode == "reset":
                    return self._drop()
                if mode == "hang":
                    server.closing.wait(30)
                    return self._drop()
                if mode == "html":
                    return self._raw(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
                if mode == "badjson":
                    return self._raw(200, b'{"choices": [', "application/json")
                if mode == "nochoices":
                    return self._json(200, {"object": "list", "data": []})
                if mode == "cut":
                    data = self._completion("잘린 답")
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    return self._drop()
                content = {"ok": None, "empty": "", "null": None, "think": None, "length": None}[mode]
                if mode in ("ok", "think", "length"):
                    content = server.answer(body)
                    if mode == "think":
                        content = f"<think>\n생각 중...\n</think>\n{content}"
                    if mode == "length":
                        content = f"{content}. 그리고 잘린 문"
                finish = "length" if mode == "length" else "stop"
                self._raw(200, self._completion(content, finish), "application/json")

            def _completion(self, content: str | None, finish: str = "stop") -> bytes:
                return json.dumps({
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": "stub",
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": content}}],
                }, ensure_ascii=False).encode("utf-8")

            def _json(self, status: int, payload: dict, headers: dict | None = None):
                self._raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _raw(self, status: int, data: bytes, content_type: str, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _drop(self):
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

        return Handler
