"""Prompts, middle truncation, output clean-up, builders and batched generation (tiny model, CPU)."""
from __future__ import annotations

import pandas as pd
import pytest

from competition.candidates.prompt import Params as PromptParams
from competition.candidates.qlora import Params as QLoRAParams
from competition.errors import ConfigError
from competition.generation import (GenerationReport, clean_output, finish, generate, lead_fallback,
                                    truncate_ids_middle)
from competition.prompts import (DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, FewShotIndex, PromptBuilder, PromptTemplate,
                                 build_messages, render, truncate_middle, user_message)
from tiny_models import FIXED_SUMMARY, run_through_cli


def test_truncate_middle_keeps_both_ends_and_marks_the_cut():
    text = "처음 문장입니다. " + "가운데 " * 200 + "마지막 결정입니다."
    cut, was_cut = truncate_middle(text, lambda t: len(t) <= 60, marker=" [...] ")
    assert was_cut and len(cut) <= 60
    assert cut.startswith("처음") and cut.endswith("결정입니다.") and "[...]" in cut
    assert truncate_middle("짧다", lambda t: len(t) <= 60) == ("짧다", False)


def test_truncate_ids_middle():
    assert truncate_ids_middle(list(range(10)), 6, [99]) == [0, 1, 99, 7, 8, 9]
    assert truncate_ids_middle([1, 2], 6, [99]) == [1, 2]


def test_clean_output_strips_chat_tokens_thinking_and_a_cut_sentence():
    assert clean_output("<think>\n음...\n</think>\n\n요약: #Person1#는  우산을 찾습니다.<|im_end|>") == \
        "#Person1#는 우산을 찾습니다."
    cut = "#Person1#는 우산을 찾습니다. #Person2#는 분실물 센"
    assert clean_output(cut, cut=True) == "#Person1#는 우산을 찾습니다."
    assert clean_output(cut, cut=False) == cut  # ended by EOS: nothing dangling
    assert clean_output("끝나지 않은 한 문장", cut=True) == "끝나지 않은 한 문장"  # nothing better to keep


def test_empty_output_falls_back_to_lead_and_is_counted():
    from competition.candidates.lead import lead_text

    report = GenerationReport()
    dialogue = "#Person1#: 안녕하세요.\n#Person2#: 반가워요.\n#Person1#: 잘 가요."
    # a turn over two lines stays one turn, as in the `lead` candidate's output
    wrapped = "#Person1# : 안녕하세요.\n오랜만이에요.\n#Person2#: 반가워요.\n#Person1#: 잘 가요."
    out = finish([("<|im_end|>", False), ("#Person1#가 인사합니다.", False), ("  ", False)],
                 [dialogue, dialogue, wrapped], report)
    assert out == [lead_fallback(dialogue), "#Person1#가 인사합니다.", lead_text(wrapped, 2)]
    assert out[0] == "#Person1#: 안녕하세요. #Person2#: 반가워요."
    assert out[2] == "#Person1#: 안녕하세요. 오랜만이에요. #Person2#: 반가워요."
    assert report.empty_to_lead == 2


def test_few_shot_never_returns_the_row_itself(korean_rows):
    index = FewShotIndex.from_rows(korean_rows)
    shots = index.nearest(korean_rows["dialogue"].tolist(), k=2)
    for dialogue, picks in zip(korean_rows["dialogue"], shots):
        assert len(picks) == 2 and all(p["dialogue"] != dialogue for p in picks)


def test_bnb_and_lora_builders_without_gpu():
    from competition.modeling import bnb_config, lora_config

    params = QLoRAParams(lora_r=8, lora_alpha=16)
    quant = bnb_config(params, device="cpu")
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    import torch

    assert bnb_config(params, device="cuda").bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(QLoRAParams(quantization="8bit")).load_in_8bit
    assert bnb_config(QLoRAParams(quantization="none")) is None
    with pytest.raises(ValueError, match="quantization"):
        QLoRAParams(quantization="3bit")
    lora = lora_config(params)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (8, 16, "all-linear")


def test_needs_cuda_only_when_declared(tmp_path):
    from competition.candidates.qlora import QLoRACandidate

    assert not QLoRACandidate("q", QLoRAParams(), tmp_path).needs_cuda()
    assert QLoRACandidate("q", QLoRAParams(require_cuda=True), tmp_path).needs_cuda()


def test_missing_model_folder_is_a_config_error(tmp_path, korean_rows):
    from competition.candidates.prompt import PromptCandidate

    candidate = PromptCandidate("p", PromptParams(model=str(tmp_path / "no-such-model")), tmp_path / "work")
    with pytest.raises(ConfigError, match="does not exist"):
        candidate.predict(korean_rows.head(1))


@pytest.mark.slow
def test_prompt_builder_uses_chat_template_and_cuts_long_dialogues(tiny_causal_lm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    template = PromptTemplate()
    text = render(tokenizer, build_messages(template, "#Person1#: 안녕하세요."))
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    builder = PromptBuilder(tokenizer, template, max_prompt_tokens=200)
    long_dialogue = "#Person1#: 처음입니다.\n" + "#Person2#: 네 알겠어요.\n" * 300 + "#Person1#: 마지막입니다."
    prompt = builder.prompt(long_dialogue)
    assert builder.truncated == 1 and builder.length(prompt) <= 200
    assert "처음입니다" in prompt and "마지막입니다" in prompt and "(중략)" in prompt


def test_topic_is_in_the_prompt_only_with_include_topic():
    dialogue = "#Person1#: 셔츠 있나요?"
    assert "주제: 쇼핑" in user_message(PromptTemplate(include_topic=True), dialogue, "쇼핑")
    assert "주제" not in user_message(PromptTemplate(), dialogue, "쇼핑")
    assert "주제" not in user_message(PromptTemplate(include_topic=True), dialogue, "")  # no topic in the data


@pytest.mark.slow
def test_base_model_gets_a_plain_prompt_and_long_dialogues_are_cut(tiny_summariser_base_lm, korean_rows, tmp_path,
                                                                   capsys):
    """A tokenizer without a chat template: plain-text prompts (few-shot examples as `요약:` lines);
    a dialogue too long for max_length is cut with the configured marker and still summarised (by a
    model trained to answer with FIXED_SUMMARY: its text comes back, not the lead fallback)."""
    from competition.candidates.prompt import PromptCandidate

    params = PromptParams(model=str(tiny_summariser_base_lm), quantization="none", include_topic=True, few_shot=1,
                          max_length=400, max_new_tokens=16, truncation_marker="\n[생략]\n")
    candidate = PromptCandidate("base", params, tmp_path / "work")
    candidate.fit(korean_rows.iloc[[0]], fold=0)  # the one few-shot example
    rows = korean_rows.iloc[[2, 3]].reset_index(drop=True)
    rows.loc[1, "dialogue"] = "#Person1#: 처음입니다.\n" + "#Person2#: 네 알겠어요.\n" * 200 + "#Person1#: 끝입니다."
    model, tokenizer = candidate.load()
    assert not tokenizer.chat_template
    texts, builder = candidate.prompts(rows, tokenizer, params.max_length - params.max_new_tokens)
    example = korean_rows.iloc[0]
    assert texts[0] == (f"{DEFAULT_SYSTEM}\n\n{DEFAULT_INSTRUCTION}\n\n주제: {example['topic']}\n\n대화:\n"
                        f"{example['dialogue']}\n\n요약: {example['summary']}\n\n{DEFAULT_INSTRUCTION}\n\n"
                        f"주제: {rows.loc[0, 'topic']}\n\n대화:\n{rows.loc[0, 'dialogue']}\n\n요약:")
    assert builder.truncated == 1 and "[생략]" in texts[1] and "처음입니다" in texts[1] and "끝입니다" in texts[1]

    summaries = candidate.predict(rows)
    assert summaries == [FIXED_SUMMARY] * 2
    assert candidate.report["empty_to_lead"] == 0 and candidate.report["inputs_truncated"] == 1
    assert "1 dialogues cut in the middle" in capsys.readouterr().err


@pytest.mark.slow
def test_sorted_batched_generation_equals_one_by_one(tiny_causal_lm, korean_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    params = PromptParams(max_new_tokens=8)
    texts = [render(tokenizer, build_messages(PromptTemplate(), d)) for d in korean_rows["dialogue"]]
    batched = generate(model, tokenizer, texts, params, batch_size=5, progress=False)
    single = generate(model, tokenizer, texts, params, batch_size=1, sort_by_length=False, progress=False)
    assert batched == single
    assert all(cut for _, cut in batched)  # a random model never says EOS within 8 tokens


@pytest.mark.slow
def test_prompt_candidate_predicts_every_row(tiny_summariser_lm, korean_rows, tmp_path):
    """Few-shot prompts through the chat template, batched generation and clean-up: a model trained
    to answer with FIXED_SUMMARY gives that text back for every row, none replaced by the lead."""
    from competition.candidates.prompt import PromptCandidate

    params = PromptParams(model=str(tiny_summariser_lm), quantization="none", few_shot=2, max_new_tokens=16,
                          max_length=400, eval_batch_size=3)
    candidate = PromptCandidate("p", params, tmp_path / "work")
    candidate.fit(korean_rows.head(8), fold=0)
    held_out = korean_rows.tail(4).reset_index(drop=True)
    summaries = candidate.predict(held_out)
    assert summaries == [FIXED_SUMMARY] * 4
    assert candidate.report["rows"] == 4 and candidate.report["empty_to_lead"] == 0


@pytest.mark.slow
def test_few_shot_examples_come_from_the_training_rows_only(tiny_causal_lm, korean_rows, tmp_path):
    """The pool `fit` saves is exactly the training rows; each held-out row's prompt shows few_shot
    of them and nothing of the other held-out rows, although here each held-out row has a
    near-twin among them (its nearest example, had the pool taken in the rows being predicted)."""
    from competition.candidates.prompt import PromptCandidate
    from competition.modeling import load_tokenizer

    params = PromptParams(model=str(tiny_causal_lm), quantization="none", few_shot=2, max_length=2000)
    candidate = PromptCandidate("p", params, tmp_path / "work")
    train = korean_rows.head(8)
    candidate.fit(train, fold=0)
    pool = FewShotIndex.load(candidate.fewshot_path).examples
    assert [(e["dialogue"], e["summary"]) for e in pool] == list(zip(train["dialogue"], train["summary"]))

    singles = korean_rows.tail(4)
    twins = singles.assign(fname=singles["fname"] + "_twin", dialogue=singles["dialogue"] + "\n#Person1#: 네, 고마워요.",
                           summary=singles["summary"] + " 둘은 인사합니다.")
    held_out = pd.concat([singles, twins], ignore_index=True)
    texts, _ = candidate.prompts(held_out, load_tokenizer(params), params.max_length)
    for text in texts:
        shown = [summary for summary in train["summary"] if summary in text]
        assert len(shown) == 2, text
        assert not any(summary in text for summary in held_out["summary"]), text


def test_bad_model_params_are_reported_as_config_problems():
    from competition.config import parse_config

    raw = {"candidates": {"q": {"kind": "qlora", "quantization": "3bit", "lora_rank": 8},
                          "s": {"kind": "seq2seq", "num_beams": 0}, "p": {"kind": "prompt", "num_cpus": 0}}}
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    message = str(error.value)
    assert "quantization = '3bit' should be one of 4bit, 8bit, none" in message
    assert "did you mean 'lora_r'?" in message and "num_beams = 0 should be 1 or more" in message
    assert "num_cpus = 0.0 should be more than 0" in message


@pytest.mark.slow
def test_llama_style_bos_is_not_doubled(tiny_causal_lm):
    """SOLAR/Llama templates write BOS and their tokenizers add it too: the prompt keeps one."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from tiny_models import CHATML

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    bos = "<|endoftext|>"
    bos_id = tokenizer.convert_tokens_to_ids(bos)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    tokenizer.bos_token = bos
    tokenizer.chat_template = "{{ bos_token }}" + CHATML
    text = render(tokenizer, build_messages(PromptTemplate(), "#Person1#: 안녕하세요."))
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == bos_id and ids[1] != bos_id


@pytest.mark.slow
def test_prompt_kind_through_competition_run(cli, korean_workspace, tiny_summariser_lm):
    run_through_cli(cli, korean_workspace, "zero_shot", (
        f'kind = "prompt"\nmodel = "{tiny_summariser_lm}"\nquantization = "none"\nfew_shot = 1\n'
        'max_length = 600\nmax_new_tokens = 16\n'), fixed_summary=FIXED_SUMMARY)
