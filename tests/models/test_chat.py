"""The endpoint client against a local stub server that misbehaves on purpose: what is retried,
what stops the queue, what is cached (never a failure), Retry-After, and the key."""
from __future__ import annotations

import json
import re
import threading
import time

import pytest

from competition.errors import InvalidValues
from competition.models.chat import ChatClient, Endpoint, EndpointError, ResponseCache, retry_after_seconds
from stub_server import StubServer, echo_first_line

KEY = "sk-chat-test-secret-42"


@pytest.fixture
def stub():
    servers = []

    def make(*script, **kwargs):
        servers.append(StubServer(script, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def client_for(server, tmp_path, lines=None, **overrides):
    settings = {"base_url": server.url, "model": "stub", "api_key_env": "", "concurrency": 2, "max_retries": 2,
                "backoff": 0.01, "timeout": 5.0, **overrides}
    echo = lines.append if lines is not None else (lambda line: None)
    return ChatClient(Endpoint(**settings), tmp_path / "cache.jsonl", label="test", echo=echo)


def bodies(client, count):
    return [client.body([{"role": "user", "content": f"질문 {i}\n둘째 줄"}], max_tokens=20) for i in range(count)]


def cached_lines(tmp_path) -> list[dict]:
    path = tmp_path / "cache.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.mark.parametrize("mode", ["500", "502", "503", "504", "429", "408", "reset", "cut", "hang",
                                  "html", "badjson", "nochoices"])
def test_each_transient_mode_is_retried_then_succeeds(stub, tmp_path, mode):
    server = stub(mode, mode)  # fails twice, then answers
    client = client_for(server, tmp_path, timeout=0.5 if mode == "hang" else 5.0)
    assert client.complete_many(bodies(client, 1)) == ["질문 0"]
    assert server.modes() == [mode, mode, "ok"]
    assert client.report.retries == 2 and client.report.answered == 1
    assert [entry["content"] for entry in cached_lines(tmp_path)] == ["질문 0"]


PERMANENT = {"400": "refused the request", "401": "no key was sent", "403": "no key was sent",
             "404": "check model = 'stub'", "422": "refused the request",
             "html": "not a chat completion (text/html", "badjson": "not a chat completion (application/json",
             "nochoices": "not a chat completion (application/json"}


def watch_attempts(client, monkeypatch) -> dict:
    """Counts, on the client's side, the requests in flight when the first stopping failure came
    back and the requests started after it. The server cannot tell: it answers other workers
    while the failure is still on its way to the client (under load, several round trips)."""
    seen = {"in_flight": 0, "in_flight_at_stop": None, "started_after_stop": 0}
    attempt = client._attempt

    async def watched(*args, **kwargs):
        if seen["in_flight_at_stop"] is not None:
            seen["started_after_stop"] += 1
        seen["in_flight"] += 1
        try:
            outcome = await attempt(*args, **kwargs)
        finally:
            seen["in_flight"] -= 1
        if getattr(outcome, "stops", False) and seen["in_flight_at_stop"] is None:
            seen["in_flight_at_stop"] = seen["in_flight"]
        return outcome

    monkeypatch.setattr(client, "_attempt", watched)
    return seen


@pytest.mark.parametrize("mode", sorted(PERMANENT))
def test_each_permanent_mode_stops_the_queue_with_one_line(stub, tmp_path, monkeypatch, mode):
    """A permanent failure stops the queue: no request starts once the client has it, only those
    already in flight finish; one line names the endpoint, the failure and how far it got."""
    concurrency = 3
    server = stub("ok", "ok", "ok", "ok", mode)  # the rest would answer
    client = client_for(server, tmp_path, concurrency=concurrency, max_retries=0)
    attempts = watch_attempts(client, monkeypatch)
    with pytest.raises(EndpointError) as caught:
        client.complete_many(bodies(client, 40))
    message = str(caught.value)
    assert "\n" not in message and server.url + "/chat/completions" in message and PERMANENT[mode] in message
    if mode.isdigit():
        assert f"HTTP {mode}" in message
    done = int(re.search(r"(\d+) of 40 done, cached; re-run to resume$", message).group(1))
    assert done == len(cached_lines(tmp_path)) >= 4
    assert attempts["started_after_stop"] == 0 and attempts["in_flight_at_stop"] <= concurrency - 1
    assert len(server.seen) < 40


def test_a_body_that_is_never_a_completion_stops_after_its_retries(stub, tmp_path):
    server = stub(default="html")
    client = client_for(server, tmp_path, concurrency=1, max_retries=2)
    with pytest.raises(EndpointError, match=r"after 2 retries: is base_url the API root"):
        client.complete_many(bodies(client, 5))
    assert server.modes() == ["html"] * 3  # one request, two retries, then the queue stopped


def test_retry_after_is_honoured_and_announced(stub, tmp_path):
    server = stub("429 retry-after 1", "503 retry-after 1")
    lines = []
    client = client_for(server, tmp_path, lines, concurrency=1, backoff=0.01)
    assert client.complete_many(bodies(client, 1)) == ["질문 0"]
    first, second, third = server.seen
    # From `answered`: the client may read an answer before the server's thread stamps `done`.
    assert second.arrived - first.answered >= 1.0 and third.arrived - second.answered >= 1.0
    assert any("HTTP 429" in line and "waiting 1 s as its Retry-After asks" in line for line in lines)


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= retry_after_seconds({"retry-after": in_a_minute}) <= 60
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_a_dead_endpoint_stops_after_concurrency_x_2_failed_requests(stub, tmp_path):
    server = stub(default="503")
    client = client_for(server, tmp_path, concurrency=2, max_retries=1)
    with pytest.raises(EndpointError) as caught:
        client.complete_many(bodies(client, 50))
    message = str(caught.value)
    assert "HTTP 503" in message and "after 1 retries: the server is overloaded" in message
    assert "the last 4 requests all failed" in message and message.endswith("0 of 50 done, cached; re-run to resume")
    # 4 requests x 2 attempts, plus at most one request the other worker had started
    assert 8 <= len(server.seen) <= 10


def test_scattered_transient_failures_finish_the_queue_then_fail(stub, tmp_path):
    server = stub("503", "ok", "ok", "ok", "503", "ok")
    client = client_for(server, tmp_path, concurrency=1, max_retries=0)
    with pytest.raises(EndpointError, match=r"2 request\(s\) failed; last: .* 4 of 6 done, cached"):
        client.complete_many(bodies(client, 6))
    assert len(server.seen) == 6 and len(cached_lines(tmp_path)) == 4
    again = client_for(server, tmp_path, concurrency=1)  # the server has recovered: only 2 are sent
    assert len(again.complete_many(bodies(again, 6))) == 6 and len(server.seen) == 8


@pytest.mark.parametrize("mode", ["empty", "null", "think"])
def test_an_empty_answer_is_asked_once_more_then_reported_and_never_cached(stub, tmp_path, mode):
    server = stub(default=mode, answer=lambda body: "")  # "think": a thinking block and nothing else
    client = client_for(server, tmp_path)
    assert client.complete_many(bodies(client, 3)) == ["", "", ""]
    assert len(server.seen) == 6 and client.report.empty == 3 and client.report.answered == 0
    assert cached_lines(tmp_path) == []
    server.default, server.answer = "ok", echo_first_line  # the server is fixed: all 3 are asked again
    again = client_for(server, tmp_path)
    assert again.complete_many(bodies(again, 3)) == ["질문 0", "질문 1", "질문 2"]
    assert len(server.seen) == 9 and len(cached_lines(tmp_path)) == 3


def test_an_empty_answer_then_a_real_one_is_cached(stub, tmp_path):
    server = stub("empty", "ok")
    client = client_for(server, tmp_path, concurrency=1)
    assert client.complete_many(bodies(client, 1)) == ["질문 0"] and len(cached_lines(tmp_path)) == 1


def test_an_empty_answer_cached_by_an_older_client_is_asked_again(stub, tmp_path):
    server = stub()
    client = client_for(server, tmp_path)
    body = bodies(client, 1)
    (tmp_path / "cache.jsonl").write_text(json.dumps({"key": client.cache_key(body[0]), "content": ""}) + "\n")
    assert client.complete_many(body) == ["질문 0"] and len(server.seen) == 1


def test_answers_are_cleaned_and_a_cut_last_sentence_dropped(stub, tmp_path):
    server = stub("think", "length", answer=lambda body: "요약: 첫 문장입니다")
    client = client_for(server, tmp_path, concurrency=1)
    assert sorted(client.complete_many(bodies(client, 2))) == ["첫 문장입니다", "첫 문장입니다."]
    cut = [entry for entry in cached_lines(tmp_path) if entry["finish_reason"] == "length"]
    assert [entry["content"] for entry in cut] == ["요약: 첫 문장입니다. 그리고 잘린 문"]  # raw; cleaned when read


def test_cached_answers_are_not_sent_again_unless_refreshed(stub, tmp_path):
    server = stub()
    client = client_for(server, tmp_path)
    client.complete_many(bodies(client, 3))
    assert client_for(server, tmp_path).complete_many(bodies(client, 4)) and len(server.seen) == 4
    refresh = client_for(server, tmp_path)
    refresh.refresh = True
    refresh.complete_many(bodies(client, 4))
    assert len(server.seen) == 8 and refresh.report.from_cache == 0


def test_a_cut_last_line_is_dropped_and_the_file_rewritten(tmp_path):
    path = tmp_path / "cache.jsonl"
    good = [json.dumps({"key": f"k{i}", "content": f"답 {i}"}, ensure_ascii=False) for i in range(2)]
    path.write_text("\n".join(good) + '\n{"key": "k2", "cont', encoding="utf-8")
    cache = ResponseCache(path)
    assert sorted(cache.load()) == ["k0", "k1"]
    assert path.read_text(encoding="utf-8") == "\n".join(good) + "\n"
    cache.append({"key": "k2", "content": "답 2"})
    assert sorted(ResponseCache(path).load()) == ["k0", "k1", "k2"]


def test_an_append_after_a_writer_killed_mid_line_stays_whole(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = ResponseCache(path)
    cache.append({"key": "k0", "content": "a"})
    with open(path, "ab") as other:  # another process, killed mid-write, after this one loaded the file
        other.write(b'{"key": "k1", "cont')
    cache.append({"key": "k2", "content": "c"})
    assert sorted(ResponseCache(path).load()) == ["k0", "k2"]
    assert path.read_text(encoding="utf-8").splitlines() == ['{"key": "k0", "content": "a"}',
                                                             '{"key": "k2", "content": "c"}']


def test_a_valid_last_line_without_newline_is_kept_and_completed(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "k0", "content": "a"}', encoding="utf-8")
    cache = ResponseCache(path)
    assert list(cache.load()) == ["k0"]
    cache.append({"key": "k1", "content": "b"})
    assert sorted(ResponseCache(path).load()) == ["k0", "k1"]


def test_parallel_writers_share_one_cache_file(stub, tmp_path):
    long_answer = lambda body: body["messages"][-1]["content"].splitlines()[0] + " " + "가나다라마바사 " * 1500
    server = stub(answer=long_answer)
    shapes = [range(0, 60), range(30, 90), range(15, 75)]
    clients = [client_for(server, tmp_path, concurrency=4) for _ in shapes]
    every = bodies(clients[0], 90)
    errors = []

    def work(client, numbers):
        try:
            client.complete_many([every[i] for i in numbers])
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(clients, shapes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    text = (tmp_path / "cache.jsonl").read_text(encoding="utf-8")
    assert all(json.loads(line)["content"].startswith("질문") for line in text.splitlines())
    reader = client_for(server, tmp_path)
    sent = len(server.seen)
    assert len(reader.complete_many(every)) == 90 and len(server.seen) == sent  # all 90 cached


def test_the_key_is_sent_but_never_written_nor_shown(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("CHAT_TEST_KEY", KEY)
    server = stub(key=KEY)
    client = client_for(server, tmp_path, api_key_env="CHAT_TEST_KEY")
    client.complete_many(bodies(client, 3))
    assert {seen.authorization for seen in server.seen} == {f"Bearer {KEY}"}
    assert KEY not in (tmp_path / "cache.jsonl").read_text(encoding="utf-8")
    monkeypatch.setenv("CHAT_TEST_KEY", "sk-wrong-key-echoed-back")
    with pytest.raises(EndpointError) as caught:  # the stub echoes the wrong key in its 401 body
        client_for(server, tmp_path, api_key_env="CHAT_TEST_KEY").complete_many(bodies(client, 5))
    assert "sk-wrong-key-echoed-back" not in str(caught.value) and "Bearer ***" in str(caught.value)
    assert "check the key in $CHAT_TEST_KEY" in str(caught.value)


def test_no_key_sends_no_authorization_header_with_a_note(stub, tmp_path, monkeypatch):
    monkeypatch.delenv("CHAT_TEST_UNSET", raising=False)
    server = stub()
    lines = []
    client = client_for(server, tmp_path, lines, api_key_env="CHAT_TEST_UNSET")
    assert client.complete_many(bodies(client, 2)) == ["질문 0", "질문 1"]
    assert [seen.authorization for seen in server.seen] == [None, None]
    assert lines == ["test: $CHAT_TEST_UNSET is not set: sending no key (fine for a server without one)"]
    locked = stub(key=KEY)
    with pytest.raises(EndpointError, match=r"no key was sent \(\$CHAT_TEST_UNSET is not set\): export the key"):
        client_for(locked, tmp_path, api_key_env="CHAT_TEST_UNSET").complete_many(bodies(client, 1))


def test_endpoint_settings_are_checked_and_every_problem_names_its_key():
    with pytest.raises(InvalidValues) as error:
        Endpoint(base_url="127.0.0.1:8000", concurrency=0, max_retries=-1, backoff=-0.5, timeout=0)
    assert error.value.problems == [
        "base_url = '127.0.0.1:8000' should be the API root, e.g. http://127.0.0.1:8000/v1",
        "concurrency = 0 should be 1 or more", "max_retries = -1 should be 0 or more",
        "backoff = -0.5 should be 0 or more", "timeout = 0 should be more than 0 seconds"]
    Endpoint(max_retries=0, backoff=0.0)  # no retries, no wait: allowed
