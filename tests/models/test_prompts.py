"""Prompts: middle truncation, few-shot examples, chat templates, topics, BOS handling."""
from __future__ import annotations

import pytest

from competition.models.prompts import (FewShotIndex, PromptBuilder, PromptTemplate, build_messages, render,
                                        truncate_middle, user_message)


def test_truncate_middle_keeps_both_ends_and_marks_the_cut():
    text = "처음 문장입니다. " + "가운데 " * 200 + "마지막 결정입니다."
    cut, was_cut = truncate_middle(text, lambda t: len(t) <= 60, marker=" [...] ")
    assert was_cut and len(cut) <= 60
    assert cut.startswith("처음") and cut.endswith("결정입니다.") and "[...]" in cut
    assert truncate_middle("짧다", lambda t: len(t) <= 60) == ("짧다", False)


def test_few_shot_never_returns_the_row_itself(korean_rows):
    index = FewShotIndex.from_rows(korean_rows)
    shots = index.nearest(korean_rows["dialogue"].tolist(), k=2)
    for dialogue, picks in zip(korean_rows["dialogue"], shots):
        assert len(picks) == 2 and all(p["dialogue"] != dialogue for p in picks)


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


def test_the_fixed_labels_are_prompt_settings_and_their_defaults_keep_every_config_hash(tmp_path):
    """English data can say "Dialogue:"/"Summary:"/"Topic:": the labels are prompt settings whose
    defaults are the Korean ones, and a config that leaves them unset keeps its config hash, so its
    results stay current."""
    from types import SimpleNamespace

    from competition.models.params import hashed_settings
    from competition.candidates.qlora import Params

    english = Params(model="m", dialogue_label="Dialogue:", summary_label="Summary:", topic_label="Topic:",
                     include_topic=True, system_prompt="You summarise dialogues.", instruction="Summarise it.")
    template = PromptTemplate.from_params(english)
    assert user_message(template, "#Person1#: Hi.", "greeting").endswith("Topic: greeting\n\nDialogue:\n#Person1#: Hi.")
    plain = SimpleNamespace(chat_template=None)  # a base model's tokenizer: plain text, answers after the label
    text = render(plain, build_messages(template, "#Person1#: Bye.", "", [{"dialogue": "#Person1#: Hi.",
                                                                         "summary": "They greet."}]),
                  template.summary_label)
    assert "\n\nSummary: They greet.\n\n" in text and text.endswith("Dialogue:\n#Person1#: Bye.\n\nSummary:")
    assert "대화" not in text and "요약" not in text
    korean = PromptTemplate.from_params(Params(model="m"))
    assert user_message(korean, "#Person1#: 안녕.").endswith("대화:\n#Person1#: 안녕.")
    assert not {"dialogue_label", "summary_label", "topic_label"} & set(hashed_settings(Params(model="m")))
    assert hashed_settings(english)["dialogue_label"] == "Dialogue:"
