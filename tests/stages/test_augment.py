"""Augmentation: speaker swap, paraphrase and synthetic via a real local HTTP server, and the
fold-safety rule (no row derived from a held-out dialogue is ever trained on)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from competition.data import augmented
from competition.errors import CompetitionError, DataError
from competition.models.chat import Endpoint
from competition.stages import augment as aug


def test_speaker_swap_renames_consistently_in_dialogue_and_summary(korean_rows):
    swapped, report = aug.speaker_swap(korean_rows)
    first = swapped.iloc[0]
    assert first["source_fname"] == "f_0" and first["augmentation"] == "speaker-swap"
    assert first["dialogue"].startswith("#Person2#: 안녕하세요")
    assert "#Person1#: 우산을 잃어버렸어요" in first["dialogue"]
    assert first["summary"] == "#Person1#는 파란 우산을 잃어버렸고 #Person2#이 분실물 센터에서 찾아 줍니다."
    # swapping back restores the original exactly
    assert aug.swap_speakers(first["dialogue"], {1: 2, 2: 1}) == korean_rows.iloc[0]["dialogue"]
    assert report.made == len(korean_rows) and swapped["fname"].is_unique


def test_speaker_swap_skips_and_counts_rows_it_cannot_change():
    rows = pd.DataFrame([
        {"fname": "a", "dialogue": "#Person1#: 안녕\n#Person2#: 네", "summary": "인사", "topic": ""},
        {"fname": "b", "dialogue": "가: 안녕\n나: 네", "summary": "인사", "topic": ""},
    ])
    swapped, report = aug.speaker_swap(rows)
    assert list(swapped["source_fname"]) == ["a"]
    assert report.dropped == {"swap changes nothing": 1}


def test_three_speaker_permutation_and_bad_permutations():
    text = "#Person1#: 하나\n#Person2#: 둘\n#Person3#: 셋"
    assert aug.swap_speakers(text, aug.parse_permutation("2,3,1")) == "#Person2#: 하나\n#Person3#: 둘\n#Person1#: 셋"
    for bad in ("1,1", "2,3", "a,b"):
        with pytest.raises(CompetitionError, match="permutation"):
            aug.parse_permutation(bad)


def test_fold_training_rows_never_include_rows_derived_from_the_held_out_fold(korean_rows):
    swapped, _ = aug.speaker_swap(korean_rows)
    synthetic = pd.DataFrame([{"fname": "synthetic_0", "source_fname": "", "augmentation": "synthetic",
                               "dialogue": "#Person1#: 새 대화\n#Person2#: 네", "summary": "새 요약", "topic": "x"}])
    folds = {fname: i % 3 for i, fname in enumerate(korean_rows["fname"])}
    for fold in range(3):
        held_out = {f for f, k in folds.items() if k == fold}
        train = korean_rows[~korean_rows["fname"].isin(held_out)]
        rows = augmented.fold_training_rows(train, [swapped, synthetic])
        derived = set(swapped.set_index("fname").loc[[f for f in rows["fname"] if f.endswith("__swap")],
                                                     "source_fname"])
        assert not derived & held_out
        assert not set(rows["fname"]) & held_out
        assert len(derived) == len(train)  # every allowed swap is used
        assert "synthetic_0" in set(rows["fname"])


def test_augmented_fname_colliding_across_files_or_with_training_is_refused(korean_rows, tmp_path):
    swapped, _ = aug.speaker_swap(korean_rows)
    first = augmented.read_augmented(aug.write_augmented(swapped, tmp_path / "swap_a.csv"))
    second = augmented.read_augmented(aug.write_augmented(swapped.head(2), tmp_path / "swap_b.csv"))
    with pytest.raises(DataError, match=r"'f_0__swap' is in both .*swap_a\.csv and .*swap_b\.csv"):
        augmented.fold_training_rows(korean_rows, [first, second])
    with pytest.raises(DataError, match=r"'f_0__swap' is twice in .*swap_a\.csv"):
        augmented.fold_training_rows(korean_rows, [first, first])
    clash = augmented.read_augmented(aug.write_augmented(swapped.head(1).assign(fname="f_5"), tmp_path / "clash.csv"))
    with pytest.raises(DataError, match=r"'f_5' is in both the training data and .*clash\.csv"):
        augmented.fold_training_rows(korean_rows, [clash])


def test_augment_cli_fnames_follow_the_output_file_so_two_files_train_together(korean_workspace, cli):
    folder = korean_workspace / "data" / "augmented"
    for name, permutation in (("swap_a", "2,1"), ("swap_b", "2,1,3")):
        result = cli(["augment", "speaker-swap", "--permutation", permutation, "--out", folder / f"{name}.csv"],
                     cwd=korean_workspace)
        assert result.exit_code == 0, result.output
    files = [augmented.read_augmented(folder / f"{name}.csv") for name in ("swap_a", "swap_b")]
    assert files[0]["fname"].str.endswith("__swap_a").all() and files[1]["fname"].str.endswith("__swap_b").all()
    rows = augmented.fold_training_rows(pd.read_csv(korean_workspace / "data" / "train.csv", dtype=str,
                                              keep_default_na=False), files)
    assert len(rows) == 12 + 12 + 12 and rows["fname"].is_unique


def test_write_augmented_round_trips_hostile_text(tmp_path):
    hostile = ["#Person1#: 홀로 있는\r캐리지 리턴", "윈도 줄바꿈\r\n다음", '"따옴표", 쉼표, 그리고 ""두 번""',
               "첫 줄\n둘째 줄", " 앞뒤 공백 ", ","]
    frame = pd.DataFrame({"fname": [f"x{i}" for i in range(len(hostile))], "source_fname": "f_0",
                          "augmentation": "paraphrase", "dialogue": hostile, "summary": hostile[::-1],
                          "topic": hostile})
    path = aug.write_augmented(frame, tmp_path / "aug.csv")
    pd.testing.assert_frame_equal(augmented.read_augmented(path), frame[augmented.AUGMENTED_COLUMNS])
    assert [p.name for p in tmp_path.iterdir()] == ["aug.csv"]  # no temp file left behind


def test_quality_filter_drops_duplicates_and_bad_ratios(korean_rows):
    made = pd.DataFrame([
        {"fname": "x1", "source_fname": "f_0", "augmentation": "paraphrase",
         "dialogue": korean_rows.iloc[0]["dialogue"], "summary": "#Person2#는 우산을 찾습니다.", "topic": ""},
        {"fname": "x2", "source_fname": "f_1", "augmentation": "paraphrase",
         "dialogue": "#Person1#: 짧다", "summary": "아주 아주 긴 요약 " * 10, "topic": ""},
        {"fname": "x3", "source_fname": "f_2", "augmentation": "paraphrase",
         "dialogue": "#Person1#: 이 셔츠 큰 치수 있어요?\n#Person2#: 네, 있습니다.", "summary": "셔츠 문의", "topic": ""},
    ])
    report = aug.AugmentReport("paraphrase")
    kept = aug.quality_filter(made, korean_rows, report)
    assert list(kept["fname"]) == ["x3"]
    assert report.dropped == {"exact duplicate dialogue": 1, "summary/dialogue length ratio out of bounds": 1}


def _light_rewrite(text: str) -> str:
    """Barely a paraphrase: sentence ends turned into exclamations."""
    return text.replace("요.", "요!").replace("다.", "다!")


class _FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint: paraphrases by `rewrite`; drops tags when asked to. Like a
    reasoning model, it thinks aloud first (a <think> block over several lines)."""

    calls = 0
    lose_tags_for = "잃어버렸어요"
    rewrite = _light_rewrite

    def do_POST(self):  # noqa: N802 (http.server API)
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("주제"):
            topic = prompt.split("'")[1]
            content = f"#Person1#: {topic} 얘기 좀 할까?\n#Person2#: 좋아.\nSUMMARY:\n두 사람이 {topic}에 대해 이야기합니다."
        else:
            text = prompt.split("\n\n", 1)[1]
            content = type(self).rewrite(text)
            if self.lose_tags_for in text:
                content = content.replace("#Person2#", "손님")
        content = f"<think>\n#Person1#: 생각 중...\nSUMMARY: 아직\n</think>\n{content}"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_llm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeLLM.calls = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_paraphrase_through_http_rejects_lost_tags_and_resumes(korean_rows, fake_llm, tmp_path):
    endpoint = Endpoint(base_url=fake_llm, model="fake", api_key_env="", concurrency=2)
    cache = tmp_path / "cache.jsonl"
    rows = korean_rows.head(4)
    made, report = aug.paraphrase(rows, aug.api_completer(endpoint, cache))
    assert report.dropped == {"lost a speaker or mask tag": 1}  # f_0's rewrite lost #Person2#
    assert list(made["source_fname"]) == ["f_1", "f_2", "f_3"]
    assert all("#Person1#" in d for d in made["dialogue"])
    assert not made[["dialogue", "summary"]].apply(lambda column: column.str.contains("think|생각 중")).any().any()
    assert made["dialogue"].tolist() == [_light_rewrite(d) for d in rows["dialogue"][1:]]  # one turn per line
    assert _FakeLLM.calls == 8
    again, _ = aug.paraphrase(rows, aug.api_completer(endpoint, cache))
    assert _FakeLLM.calls == 8  # every request came from the cache
    pd.testing.assert_frame_equal(made, again)


def test_synthetic_through_http_has_no_source_and_takes_rarest_topics(korean_rows, fake_llm, tmp_path):
    rows = pd.concat([korean_rows, korean_rows.head(2).assign(fname=lambda f: f["fname"] + "b")])
    topics = aug.rarest_topics(rows, 2)
    assert "분실물" not in topics and "약속" not in topics  # those two occur twice
    complete = aug.api_completer(Endpoint(base_url=fake_llm, model="fake", api_key_env=""), tmp_path / "c.jsonl")
    made, report = aug.synthetic(topics, 2, complete)
    assert report.made == 4 and set(made["source_fname"]) == {""}
    assert all(d.startswith("#Person1#: ") and "생각" not in d and "아직" not in s
               for d, s in zip(made["dialogue"], made["summary"]))
    assert set(made["topic"]) == set(topics) and made["fname"].is_unique


def _rewrite_by_dialogue(text: str) -> str:
    """f_1 (영화) is rewritten into an unrelated dialogue, f_2 (셔츠) barely changes, the rest get
    filler after each turn (a real rewrite); summaries (one line) barely change."""
    if "\n" not in text:
        return _light_rewrite(text)
    if "영화" in text:
        return ("#Person1#: 오늘 날씨 정말 춥네. 눈이 올 것 같지 않아?\n#Person2#: 그러게, 아침부터 하늘이 흐렸어.\n"
                "#Person1#: 따뜻한 차라도 마시러 갈까?\n#Person2#: 좋아, 근처에 새로 생긴 찻집이 있어.")
    if "셔츠" in text:
        return _light_rewrite(text)
    return "\n".join(line + " 음, 그러니까 제 말은 그렇다는 거예요." for line in text.split("\n"))


def test_augment_cli_paraphrase_through_base_url_filters_by_rouge_to_source(korean_workspace, cli, fake_llm,
                                                                               monkeypatch):
    monkeypatch.setattr(_FakeLLM, "rewrite", _rewrite_by_dialogue)
    out = korean_workspace / "data" / "augmented" / "para_a.csv"
    command = ["augment", "paraphrase", "--base-url", fake_llm, "--model", "m", "--api-key-env", "",
               "--limit", "4", "--rouge-min", "0.5", "--rouge-max", "0.9", "--out", out]
    result = cli([*command, "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source_rows"] == 4 and report["made"] == 3 and report["kept"] == 1
    # f_0 lost #Person2#; f_1 is too far from its source, f_2 too near to be a rewrite.
    assert report["dropped"] == {"lost a speaker or mask tag": 1, "ROUGE to source out of bounds": 2}
    written = augmented.read_augmented(out)
    assert written[["fname", "source_fname", "augmentation"]].values.tolist() == [["f_3__para_a", "f_3", "paraphrase"]]
    assert "think" not in out.read_text(encoding="utf-8")
    assert written["dialogue"][0].startswith("#Person1#: 요즘 잠을 잘 못 자요. 음, 그러니까")
    assert _FakeLLM.calls == 8
    again = cli(command, cwd=korean_workspace)
    assert again.exit_code == 0, again.output
    assert "1 kept" in again.output and "dropped 2: ROUGE to source out of bounds" in again.output
    assert _FakeLLM.calls == 8  # resumed from the cache beside the output


def test_augment_cli_writes_speaker_swap_file(korean_workspace, cli):
    result = cli(["augment", "speaker-swap", "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["made"] == 12 and report["kept"] == 12
    written = augmented.read_augmented(korean_workspace / "data" / "augmented" / "speaker-swap.csv")
    assert list(written.columns) == augmented.AUGMENTED_COLUMNS and len(written) == 12


def test_augment_cli_paraphrase_without_generator_says_what_to_pass(korean_workspace, cli):
    result = cli(["augment", "paraphrase"], cwd=korean_workspace)
    assert result.exit_code == 2
    assert "--local-model" in result.output and "--base-url" in result.output


@pytest.mark.slow
def test_paraphrase_and_synthetic_with_a_tiny_local_model(korean_workspace, cli, tiny_causal_lm):
    # Random weights write no usable dialogue: every row must be rejected and counted, never kept.
    result = cli(["augment", "paraphrase", "--local-model", tiny_causal_lm, "--limit", "2",
                  "--max-new-tokens", "16", "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source_rows"] == 2 and report["kept"] == 0
    assert sum(report["dropped"].values()) == 2
    assert set(report["dropped"]) <= {"lost a speaker or mask tag", "empty generation"}
    cache = korean_workspace / "data" / "augmented" / "paraphrase.cache.jsonl"
    cached = cache.read_bytes()
    assert len(cached.decode("utf-8").splitlines()) == 4  # 2 dialogues + 2 summaries: resumable
    rerun = cli(["augment", "paraphrase", "--local-model", tiny_causal_lm, "--limit", "2",
                 "--max-new-tokens", "16", "--json"], cwd=korean_workspace)
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout) == report
    assert cache.read_bytes() == cached  # nothing regenerated: every output came from the cache
    result = cli(["augment", "synthetic", "--local-model", tiny_causal_lm, "--topics", "쇼핑", "--per-topic", "1",
                  "--max-new-tokens", "16", "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dropped"] == {"not a tagged dialogue with a SUMMARY: part": 1}


def test_a_local_generator_decodes_greedily_with_the_generation_part():
    from types import SimpleNamespace

    from competition.models.params import Generation
    from competition.models.generation import generation_kwargs

    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    decoding = aug.local_generation(300)
    assert isinstance(decoding, Generation) and decoding.eval_batch_size == 4
    assert generation_kwargs(decoding, tokenizer) == {
        "num_beams": 1, "max_new_tokens": 300, "no_repeat_ngram_size": 0, "length_penalty": 1.0,
        "repetition_penalty": 1.05, "do_sample": False, "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id}


def test_a_bad_local_generator_length_is_refused_before_any_model_loads(korean_workspace, cli):
    from competition.errors import InvalidValues

    with pytest.raises(InvalidValues, match="max_new_tokens = 0 should be 1 or more"):
        aug.local_completer("no/such-model", 0)
    result = cli(["augment", "paraphrase", "--local-model", "no/such-model", "--max-new-tokens", "0"],
                 cwd=korean_workspace)
    assert result.exit_code == 2 and "--max-new-tokens" in result.output


def test_generated_text_loses_thinking_and_chat_tokens_but_keeps_one_turn_per_line():
    text = "<think>\n#Person1#: 이건 생각\n</think>\n\n#Person1#:  안녕하세요.<|im_end|>\n\n#Person2#: 네, 반가워요. 그런"
    assert aug.clean_generated(text) == "#Person1#: 안녕하세요.\n#Person2#: 네, 반가워요. 그런"
    assert aug.clean_generated(text, cut=True) == "#Person1#: 안녕하세요.\n#Person2#: 네, 반가워요."


def test_augment_endpoint_options_have_the_api_kinds_defaults():
    from competition.candidates.api import Params
    from competition.cli.augment import augment

    defaults = {option.name: option.default for option in augment.params}
    for name in ("api_key_env", "concurrency", "timeout", "max_retries", "backoff"):
        assert defaults[name] == getattr(Endpoint(), name) == getattr(Params(), name), name


@pytest.fixture
def stub():
    from stub_server import StubServer

    servers = []

    def make(*script, **kwargs):
        # Answers a paraphrase prompt with its text, a thinking block first.
        kwargs = {"answer": lambda body: body["messages"][-1]["content"].split("\n\n", 1)[1], **kwargs}
        servers.append(StubServer(script, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def paraphrase_command(url, out, *options):
    return ["augment", "paraphrase", "--base-url", url, "--model", "m", "--limit", "4", "--backoff", "0.01",
            "--rouge-max", "1.0", "--out", out, *options]


def test_augment_cli_refusal_stops_with_one_line_and_writes_the_key_nowhere(korean_workspace, cli, stub, monkeypatch):
    key = "sk-augment-secret-7"
    monkeypatch.setenv("AUGMENT_TEST_KEY", "sk-wrong-augment-key")
    server = stub(key=key)
    out = korean_workspace / "data" / "augmented" / "para.csv"
    result = cli(paraphrase_command(server.url, out, "--api-key-env", "AUGMENT_TEST_KEY"), cwd=korean_workspace)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "Error:" in line]
    assert len(errors) == 1 and "answered HTTP 401" in errors[0] and "check the key in $AUGMENT_TEST_KEY" in errors[0]
    assert errors[0].endswith("0 of 8 done, cached; re-run to resume") and "sk-wrong-augment-key" not in result.output
    assert len(server.seen) <= 1 + 4  # the refused request and at most `concurrency` more
    monkeypatch.setenv("AUGMENT_TEST_KEY", key)
    result = cli(paraphrase_command(server.url, out, "--api-key-env", "AUGMENT_TEST_KEY"), cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    written = [path for path in korean_workspace.rglob("*") if path.is_file()]
    assert out.with_suffix(".cache.jsonl") in written and not [p for p in written if key.encode() in p.read_bytes()]


def test_augment_cli_empty_answers_are_reported_not_cached_and_asked_again(korean_workspace, cli, stub):
    server = stub(default="empty")
    out = korean_workspace / "data" / "augmented" / "para.csv"
    result = cli(paraphrase_command(server.url, out, "--json"), cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert "augment: 8 of 8 answers empty: those rows are dropped, not cached" in result.stderr
    assert json.loads(result.stdout)["dropped"] == {"empty generation": 4}
    assert not out.with_suffix(".cache.jsonl").exists() and len(server.seen) == 16  # each asked twice
    server.default = "think"
    result = cli(paraphrase_command(server.url, out, "--json"), cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["made"] == 4 and len(server.seen) == 24  # all 8 asked again
    assert len(out.with_suffix(".cache.jsonl").read_text(encoding="utf-8").splitlines()) == 8


def test_augment_cli_timeout_retries_and_refresh(korean_workspace, cli, stub):
    server = stub("hang", default="think")
    out = korean_workspace / "data" / "augmented" / "para.csv"
    result = cli(paraphrase_command(server.url, out, "--timeout", "0.3", "--concurrency", "1"), cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert server.modes() == ["hang"] + ["think"] * 8  # the hung request timed out and was retried
    result = cli(paraphrase_command(server.url, out, "--refresh"), cwd=korean_workspace)
    assert result.exit_code == 0 and len(server.seen) == 17  # every cached prompt sent again
    server.default = "503"
    result = cli(paraphrase_command(server.url, out, "--refresh", "--max-retries", "0", "--concurrency", "1"),
                 cwd=korean_workspace)
    assert result.exit_code == 2 and "answered HTTP 503" in result.stderr and "the last 2 requests all failed" in result.stderr
    assert len(server.seen) == 19  # two requests, no retries, then the queue stopped


def test_augment_cli_bad_endpoint_settings_are_one_line(korean_workspace, cli):
    result = cli(["augment", "paraphrase", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                  "--concurrency", "0"], cwd=korean_workspace)
    assert result.exit_code == 2 and "augment: concurrency = 0 should be 1 or more" in result.output


@pytest.mark.parametrize("mode", ["400", "401", "403", "404", "422", "html", "badjson", "nochoices"])
def test_augment_cli_each_permanent_mode_is_one_line_exit_2(korean_workspace, cli, stub, mode):
    server = stub("think", "think", mode, default="think")
    out = korean_workspace / "data" / "augmented" / "para.csv"
    result = cli(paraphrase_command(server.url, out, "--max-retries", "0", "--concurrency", "2"), cwd=korean_workspace)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "Error:" in line]
    assert len(errors) == 1 and server.url in errors[0] and errors[0].endswith("of 8 done, cached; re-run to resume")
    assert (f"HTTP {mode}" if mode.isdigit() else "not a chat completion") in errors[0]
    failed_at = next(seen.answered for seen in server.seen if seen.mode == mode)
    assert sum(seen.arrived > failed_at for seen in server.seen) <= 2
    assert not out.exists()
