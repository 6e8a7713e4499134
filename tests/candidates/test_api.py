"""The api kind against a local OpenAI-compatible stub server (tests/stub_server.py), directly and
through `competition run`: retries, resumption, empty answers, refusals, and the key."""
from __future__ import annotations

import json
import re

import pytest

from competition.candidates.api import ApiCandidate, Params
from competition.errors import ConfigError
from competition.models.chat import EndpointError
from competition.models.generation import lead_fallback
from stub_server import StubServer
from tiny_models import run_through_cli

KEY = "sk-test-secret-123"


def summary_of_dialogue(body: dict) -> str:
    """'요약: ' + the dialogue's first line, as a chatty model would put it."""
    return "요약: " + body["messages"][-1]["content"].split("대화:\n", 1)[1].splitlines()[0]


@pytest.fixture
def stub():
    servers = []

    def make(*script, **kwargs):
        kwargs = {"key": KEY, "answer": summary_of_dialogue, "default": "think", **kwargs}
        servers.append(StubServer(script, **kwargs))
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


def cache_lines(workdir) -> list[str]:
    path = workdir / "api_cache.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_predicts_every_row_retrying_a_500(stub, korean_rows, tmp_path):
    server = stub("500")
    candidate = ApiCandidate("api", params(server.url), tmp_path / "work")
    rows = korean_rows.head(4)
    summaries = candidate.predict(rows)
    assert summaries == [d.splitlines()[0] for d in rows["dialogue"]]  # thinking block and prefix cleaned
    assert len(server.seen) == 5  # 4 rows + 1 retry
    assert len(cache_lines(tmp_path / "work")) == 4
    assert candidate.report["endpoint"]["retries"] == 1


def test_resumes_from_cached_rows(stub, korean_rows, tmp_path):
    server = stub()
    ApiCandidate("api", params(server.url), tmp_path / "work").predict(korean_rows.head(2))
    assert len(server.seen) == 2
    candidate = ApiCandidate("api", params(server.url), tmp_path / "work")  # a re-run after a kill
    summaries = candidate.predict(korean_rows.head(5))
    assert len(server.seen) == 5  # only the 3 unfinished rows were sent
    assert candidate.report["from_cache"] == 2 and candidate.report["requested"] == 3 and len(summaries) == 5


def test_few_shot_examples_come_from_training_rows(stub, korean_rows, tmp_path):
    server = stub()
    candidate = ApiCandidate("api", params(server.url, few_shot=1), tmp_path / "work")
    candidate.fit(korean_rows.head(6), fold=0)
    candidate.predict(korean_rows.tail(2))
    messages = server.seen[0].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] in set(korean_rows.head(6)["summary"])


def test_empty_answers_fall_back_to_lead_are_reported_and_asked_again(stub, korean_rows, tmp_path, capsys):
    server = stub("ok", default="empty")
    candidate = ApiCandidate("api", params(server.url, concurrency=1), tmp_path / "work")
    rows = korean_rows.head(3)
    summaries = candidate.predict(rows)
    leads = [lead_fallback(d) for d in rows["dialogue"]]
    assert sum(s == lead for s, lead in zip(summaries, leads)) == 2 and candidate.report["empty_to_lead"] == 2
    assert "api: 2 of 3 rows empty: lead fallback used" in capsys.readouterr().err
    assert len(cache_lines(tmp_path / "work")) == 1 and len(server.seen) == 5  # 1 + 2 x (asked, asked again)
    server.default = "ok"  # fixed: the next run asks for the 2 empty rows only
    again = ApiCandidate("api", params(server.url), tmp_path / "work")
    assert again.predict(rows) == [d.splitlines()[0] for d in rows["dialogue"]]
    assert len(server.seen) == 7 and again.report["empty_to_lead"] == 0


def test_bad_key_and_missing_key_name_the_key(stub, korean_rows, tmp_path, monkeypatch):
    server = stub()
    monkeypatch.setenv("TEST_API_KEY", "wrong")
    with pytest.raises(EndpointError, match=r"answered HTTP 401 .*check the key in \$TEST_API_KEY; 0 of 1 done"):
        ApiCandidate("api", params(server.url), tmp_path / "work").predict(korean_rows.head(1))
    monkeypatch.delenv("TEST_API_KEY")
    with pytest.raises(EndpointError, match=r"no key was sent \(\$TEST_API_KEY is not set\)"):
        ApiCandidate("api", params(server.url), tmp_path / "work").predict(korean_rows.head(1))
    assert [seen.authorization for seen in server.seen] == ["Bearer wrong", None]


def test_bad_endpoint_and_prompt_settings_fail_at_load_each_naming_its_key(korean_workspace):
    from competition.workspace.config import load_config

    path = korean_workspace / "competition.toml"
    path.write_text('[candidates.remote]\nkind = "api"\nmodel = "m"\nconcurrency = 0\ntimeout = -1\nfew_shot = -3\n'
                    'max_tokens = 0\nmax_dialogue_chars = -5\n', encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    for problem in ("concurrency = 0 should be 1 or more", "timeout = -1.0 should be more than 0 seconds",
                    "few_shot = -3 should be 0 or more", "max_tokens = 0 should be 1 or more",
                    "max_dialogue_chars = -5 should be 1 or more"):
        assert f"[candidates.remote] {problem}" in str(error.value), problem


def test_the_prompt_part_keeps_an_api_candidates_config_hash():
    """An api candidate built from the Prompt part hashes to its pinned config hashes, so results
    made with the same competition.toml stay current."""
    from competition.workspace.config import parse_config
    from competition.results.provenance import candidate_hash

    config = parse_config({"candidates": {
        "plain": {"kind": "api"},
        "set": {"kind": "api", "model": "qwen", "base_url": "https://example.org/v1", "few_shot": 2, "max_tokens": 120,
                "max_dialogue_chars": 4000, "temperature": 0.2, "include_topic": True, "system_prompt": "",
                "concurrency": 8}}})
    assert candidate_hash(config, "plain")[0] == "e4351d17a21847b5"
    assert candidate_hash(config, "set")[0] == "c126c710e1bda2c5"


def add_candidate(cli, workspace, url, extra=""):
    config = (workspace / "competition.toml").read_text(encoding="utf-8")
    config += (f'[cv]\nk = 2\n\n[candidates.remote]\nkind = "api"\nbase_url = "{url}"\nmodel = "tiny"\n'
               f'api_key_env = "TEST_API_KEY"\nbackoff = 0.01\nconcurrency = 2\n{extra}')
    (workspace / "competition.toml").write_text(config, encoding="utf-8")
    assert cli(["folds", "build"], cwd=workspace).exit_code == 0


def files_containing(root, text: str) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def test_api_kind_through_competition_run_writes_the_key_nowhere(cli, korean_workspace, stub):
    server = stub("500")
    runs = run_through_cli(cli, korean_workspace, "remote", (
        f'kind = "api"\nbase_url = "{server.url}"\nmodel = "tiny"\napi_key_env = "TEST_API_KEY"\n'
        'backoff = 0.01\n'))
    assert (runs / "meta.json").exists() and {s.authorization for s in server.seen} == {f"Bearer {KEY}"}
    assert files_containing(korean_workspace, KEY) == []


@pytest.mark.parametrize("mode, hint", [("401", "check the key in $TEST_API_KEY"),
                                        ("404", "check model = 'tiny'"),
                                        ("html", "is base_url the API root")])
def test_a_refusal_stops_competition_run_with_one_line_and_a_rerun_resumes(cli, korean_workspace, stub, mode, hint):
    server = stub(*["think"] * 3, mode, "think")
    add_candidate(cli, korean_workspace, server.url, "max_retries = 0\n")
    result = cli(["run", "remote"], cwd=korean_workspace)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "Error:" in line]
    assert len(errors) == 1 and hint in errors[0] and server.url in errors[0]
    done = int(re.search(r"(\d+) of 6 done, cached; re-run to resume$", errors[0]).group(1))
    assert done == len(cache_lines(korean_workspace / "runs" / "remote" / "fold_0" / "work")) >= 3
    assert files_containing(korean_workspace, KEY) == []
    assert cli(["run", "remote"], cwd=korean_workspace).exit_code == 0
    # Every answered request is one line of its fold's cache, none twice: no cached row was asked again.
    caches = [[json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()]
              for path in korean_workspace.rglob("api_cache.jsonl")]
    assert all(len(keys) == len(set(keys)) for keys in caches)
    assert sum(map(len, caches)) == sum(seen.mode == "think" for seen in server.seen)


def test_empty_rows_are_reported_by_competition_run(cli, korean_workspace, stub):
    server = stub(default="empty")
    add_candidate(cli, korean_workspace, server.url)
    result = cli(["run", "remote"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert "remote: 6 of 6 rows empty: lead fallback used" in result.stderr
    assert "remote: 4 of 4 rows empty: lead fallback used" in result.stderr
    assert not list(korean_workspace.rglob("api_cache.jsonl")) or all(
        path.read_text() == "" for path in korean_workspace.rglob("api_cache.jsonl"))
    # The count is in each fold's meta.json, and a plain re-run (no --force) asks again once the
    # server answers: folds with lead fallbacks never count as done.
    meta = json.loads((korean_workspace / "runs" / "remote" / "fold_0" / "meta.json").read_text(encoding="utf-8"))
    assert [meta["reports"][split]["empty_to_lead"] for split in ("oof", "test", "dev")] == [6, 4, 4]
    server.default = "ok"
    again = cli(["run", "remote"], cwd=korean_workspace)
    assert again.exit_code == 0, again.output
    assert "remote: fold 0: 14 row(s) were answered empty (lead fallback): asking again" in again.stderr  # 6 + 4 + 4
    meta = json.loads((korean_workspace / "runs" / "remote" / "fold_0" / "meta.json").read_text(encoding="utf-8"))
    assert meta["reports"]["oof"]["empty_to_lead"] == 0
    asked = len(server.seen)
    third = cli(["run", "remote"], cwd=korean_workspace)
    assert "asking again" not in third.stderr and len(server.seen) == asked  # every answer cached: nothing sent
    refreshed = cli(["run", "remote", "--refresh"], cwd=korean_workspace)  # on purpose: every row sent again
    assert refreshed.exit_code == 0 and len(server.seen) == asked + 2 * (6 + 4 + 4)
