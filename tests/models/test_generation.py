"""Prompts, middle truncation, output clean-up, builders and batched generation (tiny model, CPU)."""
from __future__ import annotations

import pytest

from competition.candidates.prompt import Params as PromptParams
from competition.models.generation import (GenerationReport, clean_output, finish, generate, lead_fallback,
                                           truncate_ids_middle)
from competition.models.prompts import PromptTemplate, build_messages, render


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
    from competition.text.turns import lead_text

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
def test_generation_reports_rows_done_of_total_and_counts_new_tokens(tiny_causal_lm, korean_rows, monkeypatch,
                                                                      capsys):
    """Progress in rows (not batches: "10 batches ... 0.0 batches/s" said nothing a person could use),
    a line per interval off a terminal; the report counts the tokens generated."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from competition import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    texts = [render(tokenizer, build_messages(PromptTemplate(), d)) for d in korean_rows["dialogue"].head(5)]
    report = GenerationReport()
    capsys.readouterr()
    generate(model, tokenizer, texts, PromptParams(max_new_tokens=4), batch_size=2, report=report)
    lines = capsys.readouterr().err.splitlines()
    # The update that reaches the total prints no "5/5 rows, 0 s left" line: the closing line says it.
    assert [line.split(",")[0] for line in lines[:2]] == ["generate: 2/5 rows", "generate: 4/5 rows"]
    assert all(line.endswith(" left") for line in lines[:2]) and lines[2].startswith("generate: 5 rows in ")
    assert len(lines) == 3
    assert report.new_tokens == 5 * 4  # a random model never says EOS within 4 tokens
