"""Prompts for causal LMs: a template per candidate, the tokenizer's chat template when it has one,
few-shot examples retrieved from the training rows only, and middle truncation with a marker."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_SYSTEM = "당신은 한국어 일상 대화를 정확하고 간결하게 요약하는 도우미입니다."
DEFAULT_INSTRUCTION = ("다음 대화를 한두 문장으로 요약하세요. 화자는 #Person1#, #Person2#처럼 대화의 태그 그대로 "
                       "쓰세요.")
DEFAULT_MARKER = "\n... (중략) ...\n"
# The fixed labels of the user message (and of a plain-text prompt's answer), part of the Prompt
# settings so English data can say "Dialogue:" and "Summary:".
DEFAULT_DIALOGUE_LABEL = "대화:"
DEFAULT_SUMMARY_LABEL = "요약:"
DEFAULT_TOPIC_LABEL = "주제:"


@dataclass
class PromptTemplate:
    system: str = DEFAULT_SYSTEM  # system message ("" = none)
    instruction: str = DEFAULT_INSTRUCTION  # written before the dialogue
    include_topic: bool = False  # add the row's topic (when the data has one) to the user message
    marker: str = DEFAULT_MARKER  # replaces the middle of a dialogue too long for max_length
    dialogue_label: str = DEFAULT_DIALOGUE_LABEL  # the line before the dialogue
    summary_label: str = DEFAULT_SUMMARY_LABEL  # plain-text prompts (no chat template): before each summary
    topic_label: str = DEFAULT_TOPIC_LABEL  # before the topic (include_topic)

    @classmethod
    def from_params(cls, params) -> "PromptTemplate":
        return cls(system=params.system_prompt, instruction=params.instruction,
                   include_topic=params.include_topic, marker=params.truncation_marker,
                   dialogue_label=params.dialogue_label, summary_label=params.summary_label,
                   topic_label=params.topic_label)


def user_message(template: PromptTemplate, dialogue: str, topic: str = "") -> str:
    parts = [template.instruction] if template.instruction else []
    if template.include_topic and topic:
        parts.append(f"{template.topic_label} {topic}")
    parts.append(f"{template.dialogue_label}\n{dialogue}")
    return "\n\n".join(parts)


def build_messages(template: PromptTemplate, dialogue: str, topic: str = "",
                   examples: list[dict] | tuple = ()) -> list[dict]:
    """System, then each few-shot example as a user/assistant pair, then the dialogue to summarise."""
    messages = [{"role": "system", "content": template.system}] if template.system else []
    for example in examples:
        messages.append({"role": "user", "content": user_message(template, example["dialogue"],
                                                                 example.get("topic", ""))})
        messages.append({"role": "assistant", "content": example["summary"]})
    messages.append({"role": "user", "content": user_message(template, dialogue, topic)})
    return messages


def render(tokenizer, messages: list[dict], summary_label: str = DEFAULT_SUMMARY_LABEL) -> str:
    """The text a causal LM continues: the chat template with a generation prompt, or plain text
    (each answer after `summary_label`, which also ends the prompt)."""
    if getattr(tokenizer, "chat_template", None):
        # enable_thinking=False: Qwen3 templates then emit an empty <think></think> block; others ignore it.
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
        bos = tokenizer.bos_token
        # Tokenizing adds BOS where the model wants one (Llama, SOLAR): drop the template's copy.
        if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
            text = text[len(bos):]
        return text
    blocks = []
    for message in messages:
        if message["role"] == "assistant":
            blocks.append(f"{summary_label} {message['content']}")
        else:
            blocks.append(message["content"])
    return "\n\n".join(blocks) + f"\n\n{summary_label}"


def truncate_middle(text: str, fits: Callable[[str], bool], marker: str = DEFAULT_MARKER) -> tuple[str, bool]:
    """The longest `head + marker + tail` (equal character shares) for which `fits` holds.

    Returns (text, whether it was cut). The start (who is talking, why) and the end (what was
    decided) carry most of a summary, so the middle goes first.
    """
    if fits(text):
        return text, False
    low, high = 0, len(text) // 2  # characters kept on each side
    while low < high:
        keep = (low + high + 1) // 2
        if fits(text[:keep] + marker + text[len(text) - keep:]):
            low = keep
        else:
            high = keep - 1
    return text[:low] + marker + text[len(text) - low:] if low else marker.strip(), True


class PromptBuilder:
    """Renders prompts that fit `max_prompt_tokens`: drops few-shot examples first, then cuts the
    dialogue's middle. Counts how many prompts were cut."""

    def __init__(self, tokenizer, template: PromptTemplate, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.truncated = 0

    def length(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def prompt(self, dialogue: str, topic: str = "", examples: list[dict] | tuple = ()) -> str:
        examples = list(examples)
        while True:
            text = render(self.tokenizer, build_messages(self.template, dialogue, topic, examples),
                          self.template.summary_label)
            if self.length(text) <= self.max_prompt_tokens:
                return text
            if not examples:
                break
            examples.pop()  # the least similar example goes first

        def fits(candidate_dialogue: str) -> bool:
            rendered = render(self.tokenizer, build_messages(self.template, candidate_dialogue, topic),
                              self.template.summary_label)
            return self.length(rendered) <= self.max_prompt_tokens

        cut, _ = truncate_middle(dialogue, fits, self.template.marker)
        self.truncated += 1
        return render(self.tokenizer, build_messages(self.template, cut, topic), self.template.summary_label)


class FewShotIndex:
    """Nearest training dialogues by character n-gram TF-IDF; built from the rows `fit` sees, which
    are the training folds only, so a held-out row never meets its own summary."""

    def __init__(self, examples: list[dict]):
        self.examples = examples
        self._vectorizer = None
        self._matrix = None

    @classmethod
    def from_rows(cls, rows) -> "FewShotIndex":
        topics = rows["topic"] if "topic" in rows else [""] * len(rows)
        return cls([{"dialogue": d, "summary": s, "topic": t or ""}
                    for d, s, t in zip(rows["dialogue"], rows["summary"], topics)])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.examples), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "FewShotIndex":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls([json.loads(line) for line in lines if line])

    def nearest(self, dialogues: list[str], k: int) -> list[list[dict]]:
        """k most similar examples per dialogue, most similar first; never the dialogue itself."""
        if k <= 0 or not self.examples:
            return [[] for _ in dialogues]
        from sklearn.feature_extraction.text import TfidfVectorizer

        if self._vectorizer is None:
            self._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), sublinear_tf=True)
            self._matrix = self._vectorizer.fit_transform([e["dialogue"] for e in self.examples])
        similarity = (self._vectorizer.transform(dialogues) @ self._matrix.T).toarray()
        chosen = []
        for row, dialogue in enumerate(dialogues):
            order = similarity[row].argsort()[::-1]
            picks = [self.examples[i] for i in order if self.examples[i]["dialogue"] != dialogue][:k]
            chosen.append(picks)
        return chosen


def prompt_inputs(rows, few_shot: int, fewshot_path: Path) -> tuple[list[str], list[str], list[list[dict]]]:
    """Each row's dialogue, topic ("" without one) and its `few_shot` nearest examples from the
    training rows `fit` saved at `fewshot_path` (none when few_shot is 0 or nothing was saved)."""
    dialogues = rows["dialogue"].tolist()
    topics = rows["topic"].fillna("").tolist() if "topic" in rows else [""] * len(rows)
    if few_shot > 0 and Path(fewshot_path).exists():
        examples = FewShotIndex.load(fewshot_path).nearest(dialogues, few_shot)
    else:
        examples = [[] for _ in dialogues]
    return dialogues, topics, examples
