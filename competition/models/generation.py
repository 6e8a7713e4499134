"""Batched generation shared by the qlora, prompt and seq2seq kinds: rows sorted by length (less
padding), left padding for decoder-only models, middle truncation of over-long inputs, and output
clean-up (chat tokens, whitespace, a sentence cut off by max_new_tokens, empty -> lead)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..progress import progress as show_progress
from ..text.turns import lead_text
from .params import Generation
from .prompts import DEFAULT_MARKER

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)
_CHAT_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>|<pad>|<unk>|<eos>|<bos>")
_ANSWER_PREFIX = re.compile(r"^\s*(요약|summary|assistant)\s*[:：]\s*", re.I)
_SENTENCE_END = re.compile(r"[.!?。…](?=\s|$)")


@dataclass
class GenerationReport:
    """What happened to a batch of rows: how many were cut by max_new_tokens, emptied, truncated."""
    rows: int = 0
    cut_by_max_new_tokens: int = 0
    empty_to_lead: int = 0
    inputs_truncated: int = 0
    new_tokens: int = 0  # tokens generated, up to and including each row's end of sequence
    extra: dict = field(default_factory=dict)


def generation_kwargs(params: Generation, tokenizer) -> dict:
    """`model.generate` arguments from a kind's Params (beams, lengths, penalties, sampling)."""
    kwargs = dict(num_beams=params.num_beams, max_new_tokens=params.max_new_tokens,
                  no_repeat_ngram_size=params.no_repeat_ngram_size, length_penalty=params.length_penalty,
                  repetition_penalty=params.repetition_penalty, do_sample=params.do_sample,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if params.min_new_tokens > 0:
        kwargs["min_new_tokens"] = min(params.min_new_tokens, params.max_new_tokens)
    if params.num_beams > 1:
        kwargs["early_stopping"] = True
    if params.do_sample:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    return kwargs


def decoding_kwargs(params, tokenizer, generation_config) -> dict:
    """Everything `generate` passes to model.generate: generation_kwargs, stopping at the
    tokenizer's EOS and at every EOS the model's generation config names (Qwen3: two). An export's
    generation_config.json holds exactly these."""
    kwargs = generation_kwargs(params, tokenizer)
    eos_ids = {tokenizer.eos_token_id} | _ids(getattr(generation_config, "eos_token_id", None))
    eos_ids.discard(None)
    kwargs["eos_token_id"] = sorted(eos_ids)
    return kwargs


def _ids(value) -> set:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def truncate_ids_middle(ids: list[int], limit: int, marker_ids: list[int]) -> list[int]:
    """Keep the head and the tail of a token sequence around `marker_ids` so it has `limit` tokens."""
    if len(ids) <= limit:
        return ids
    room = max(limit - len(marker_ids), 2)
    head = room // 2
    return ids[:head] + marker_ids + ids[len(ids) - (room - head):]


def encode(tokenizer, texts: list[str], max_input_tokens: int | None = None,
           marker: str = DEFAULT_MARKER) -> tuple[list[list[int]], int]:
    """(token ids per text, how many were cut): ids longer than max_input_tokens lose their middle
    to `marker`. Special tokens are added as in training (BOS for Llama-style, EOS for T5)."""
    encoded = tokenizer(texts)["input_ids"]
    if not max_input_tokens:
        return encoded, 0
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    cut = [truncate_ids_middle(ids, max_input_tokens, marker_ids) for ids in encoded]
    return cut, sum(len(ids) > max_input_tokens for ids in encoded)


def generate(model, tokenizer, texts: list[str], params, *, encoder_decoder: bool = False,
             max_input_tokens: int | None = None, marker: str = DEFAULT_MARKER, batch_size: int | None = None,
             sort_by_length: bool = True, report: GenerationReport | None = None,
             progress: bool = True) -> list[tuple[str, bool]]:
    """(raw text, cut by max_new_tokens) per input, in input order.

    Inputs are tokenized once (over max_input_tokens: cut in the middle around `marker`), sorted
    longest first (so an out-of-memory shows on the first batch and each batch pads to similar
    lengths), padded per batch on the left for decoder-only models.
    """
    import torch

    report = report if report is not None else GenerationReport()
    batch_size = batch_size or params.eval_batch_size
    encoded, truncated = encode(tokenizer, texts, max_input_tokens, marker)
    report.inputs_truncated += truncated
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i])) if sort_by_length else list(range(len(texts)))
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    kwargs = decoding_kwargs(params, tokenizer, model.generation_config)
    eos_ids = set(kwargs["eos_token_id"])
    kwargs["use_cache"] = True  # a model in training has use_cache off in its config (validation generates with it)
    device = next(model.parameters()).device
    results: list[tuple[str, bool] | None] = [None] * len(texts)
    model.eval()
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    with show_progress(desc="generate", total=len(texts), unit="rows", enabled=progress) as bar:
        for batch in batches:
            padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            padded = {key: value.to(device) for key, value in padded.items()}
            with torch.inference_mode():
                output = model.generate(**padded, **kwargs)
            new_tokens = output if encoder_decoder else output[:, padded["input_ids"].shape[1]:]
            for row, tokens in zip(batch, new_tokens.tolist()):
                if encoder_decoder and tokens and tokens[0] == model.config.decoder_start_token_id:
                    tokens = tokens[1:]
                ends = [at for at, token in enumerate(tokens) if token in eos_ids]
                ended = bool(ends)
                report.new_tokens += ends[0] + 1 if ends else len(tokens)
                cut = not ended and len(tokens) >= params.max_new_tokens
                results[row] = (tokenizer.decode(tokens, skip_special_tokens=True), cut)
            bar.update(len(batch))  # rows, not batches: the longest batches come first, so rows/s rises as it goes
    report.rows += len(texts)
    return results  # type: ignore[return-value]


def clean_output(text: str, cut: bool = False, keep_lines: bool = False) -> str:
    """Strip chat tokens and thinking blocks, collapse whitespace, drop a dangling last sentence.
    The one cleaner for every generator (local models, endpoints); keep_lines keeps one line per
    turn (generated dialogues) instead of joining everything into one summary line."""
    text = _THINK.sub(" ", text)
    text = _CHAT_TOKEN.sub(" ", text)
    text = _ANSWER_PREFIX.sub("", text).replace("\ufffd", "")  # half a character cut by max_new_tokens
    lines = text.splitlines() if keep_lines else [text]
    text = "\n".join(filter(None, (" ".join(line.split()) for line in lines)))
    if cut:
        ends = [match.end() for match in _SENTENCE_END.finditer(text)]
        if ends and ends[-1] < len(text):
            text = text[:ends[-1]]
    return text.strip()


def lead_fallback(dialogue: str, turns: int = 2) -> str:
    """The `lead` candidate's output for one row (its first `turns` turns, default turn_format):
    what a model that says nothing is replaced with."""

    return lead_text(str(dialogue), turns)


def finish(raw: list[tuple[str, bool]], dialogues: list[str], report: GenerationReport) -> list[str]:
    """Cleaned summaries; an empty one becomes the lead output and is counted in `report`."""
    summaries = []
    for (text, cut), dialogue in zip(raw, dialogues):
        report.cut_by_max_new_tokens += int(cut)
        summary = clean_output(text, cut)
        if not summary:
            summary = lead_fallback(dialogue)
            report.empty_to_lead += 1
        summaries.append(summary)
    return summaries
