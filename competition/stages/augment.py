"""Fold-safe data augmentation: speaker swap, paraphrase, synthetic dialogues.

Every augmented row remembers its `source_fname`. A fold trains on an augmented row only when its
source row is in that fold's training set (synthetic rows, with no source, only ever train), so an
augmented copy of a held-out dialogue can never inflate CV.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..data.augmented import AUGMENTED_COLUMNS
from ..errors import CompetitionError
from ..files import atomic_write_csv
from ..models.chat import ChatClient
from ..models.generation import clean_output, generate
from ..models.params import Generation
from ..models.prompts import render

_SPEAKER = re.compile(r"#Person(\d+)#")
_TAG = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")


@dataclass
class AugmentReport:
    """What was made, kept and dropped (by reason)."""

    method: str
    source_rows: int = 0
    made: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def as_dict(self) -> dict:
        return {"method": self.method, "source_rows": self.source_rows, "made": self.made,
                "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


def parse_permutation(text: str) -> dict[int, int]:
    """"2,1,3" -> speaker 1 becomes 2, 2 becomes 1, 3 stays; must be a permutation of 1..n."""
    try:
        targets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CompetitionError(f"--permutation {text!r}: give speaker numbers like 2,1 or 2,3,1") from None
    if sorted(targets) != list(range(1, len(targets) + 1)):
        raise CompetitionError(f"--permutation {text!r} is not a permutation of 1..{len(targets)}: "
                               f"each speaker number must appear once, e.g. 2,3,1")
    return {source: target for source, target in enumerate(targets, start=1)}


def swap_speakers(text: str, mapping: dict[int, int]) -> str:
    """Rename #PersonN# tags by `mapping`, all at once (so 1<->2 does not undo itself)."""
    return _SPEAKER.sub(lambda m: f"#Person{mapping.get(int(m.group(1)), int(m.group(1)))}#", text)


def speaker_swap(rows: pd.DataFrame, permutation: str = "2,1", name: str = "swap") -> tuple[pd.DataFrame, AugmentReport]:
    """Each row with its speakers renamed consistently in dialogue and summary; fnames are
    SOURCE__NAME (the CLI passes its output file's stem, so two files never share an fname)."""
    mapping = parse_permutation(permutation)
    report = AugmentReport("speaker-swap", source_rows=len(rows))
    out = []
    for row in rows.itertuples(index=False):
        dialogue = swap_speakers(row.dialogue, mapping)
        summary = swap_speakers(row.summary, mapping)
        if dialogue == row.dialogue and summary == row.summary:
            report.drop("swap changes nothing")
            continue
        out.append({"fname": f"{row.fname}__{name}", "source_fname": row.fname, "augmentation": "speaker-swap",
                    "dialogue": dialogue, "summary": summary, "topic": getattr(row, "topic", "")})
    report.made = len(out)
    return pd.DataFrame(out, columns=AUGMENTED_COLUMNS), report


def tags_of(text: str) -> set[str]:
    return set(_TAG.findall(text))


def quality_filter(augmented: pd.DataFrame, originals: pd.DataFrame, report: AugmentReport,
                   min_ratio: float = 0.02, max_ratio: float = 1.0, rouge_bounds: tuple[float, float] | None = None,
                   scorer=None) -> pd.DataFrame:
    """Drop rows whose summary/dialogue length ratio is out of bounds, exact duplicates of an
    original or of each other, and (paraphrases) rows whose ROUGE to the source is out of bounds."""
    if augmented.empty:
        report.kept = 0
        return augmented
    keep = pd.Series(True, index=augmented.index)
    ratio = augmented["summary"].str.len() / augmented["dialogue"].str.len().clip(lower=1)
    bad_ratio = (ratio < min_ratio) | (ratio > max_ratio)
    report.drop("summary/dialogue length ratio out of bounds", int(bad_ratio.sum()))
    keep &= ~bad_ratio
    seen = set(originals["dialogue"])
    duplicate = augmented["dialogue"].isin(seen) | augmented["dialogue"].duplicated()
    report.drop("exact duplicate dialogue", int((duplicate & keep).sum()))
    keep &= ~duplicate
    if rouge_bounds is not None and scorer is not None:
        sources = originals.set_index("fname")["dialogue"]
        candidates = augmented[keep & augmented["source_fname"].isin(sources.index)]
        if len(candidates):
            finals = scorer.score(list(candidates["dialogue"]),
                                  [sources[s] for s in candidates["source_fname"]]).row_finals / 100
            low, high = rouge_bounds
            out = pd.Series((finals < low) | (finals > high), index=candidates.index)
            report.drop("ROUGE to source out of bounds", int(out.sum()))
            keep &= ~out.reindex(keep.index, fill_value=False)
    kept = augmented[keep].reset_index(drop=True)
    report.kept = len(kept)
    return kept


def keeps_tags(source: str, rewritten: str) -> bool:
    """A paraphrase must keep every speaker and mask tag of its source."""
    return tags_of(source) <= tags_of(rewritten)


PARAPHRASE_PROMPT = ("다음 대화를 같은 의미로 자연스럽게 바꿔 쓰세요. #Person1# 같은 화자 태그와 #PhoneNumber# 같은 "
                     "마스크 태그는 그대로 두고, 형식은 '#PersonN#: 발화' 한 줄씩 유지하세요.\n\n{text}")
SUMMARY_PROMPT = ("다음 요약문을 같은 의미로 바꿔 쓰세요. 태그(#Person1# 등)는 그대로 두세요.\n\n{text}")
SYNTHETIC_PROMPT = ("주제 '{topic}'에 대한 두 사람의 일상 대화를 6~10턴으로 쓰고, 마지막에 'SUMMARY:' 다음 줄에 "
                    "세 문장 이내의 요약을 쓰세요. 화자는 #Person1#, #Person2#로 표기하세요.")


def paraphrase(rows: pd.DataFrame, complete: Callable[[list[str]], list[str]],
               name: str = "para") -> tuple[pd.DataFrame, AugmentReport]:
    """Rewrite dialogue and summary with a generator; rows that lose a tag are rejected. Fnames are
    SOURCE__NAME."""
    report = AugmentReport("paraphrase", source_rows=len(rows))
    prompts = [PARAPHRASE_PROMPT.format(text=d) for d in rows["dialogue"]]
    prompts += [SUMMARY_PROMPT.format(text=s) for s in rows["summary"]]
    outputs = complete(prompts)
    dialogues, summaries = outputs[: len(rows)], outputs[len(rows):]
    out = []
    for row, dialogue, summary in zip(rows.itertuples(index=False), dialogues, summaries):
        dialogue, summary = dialogue.strip(), summary.strip()
        if not dialogue or not summary:
            report.drop("empty generation")
            continue
        if not keeps_tags(row.dialogue, dialogue) or not keeps_tags(row.summary, summary):
            report.drop("lost a speaker or mask tag")
            continue
        out.append({"fname": f"{row.fname}__{name}", "source_fname": row.fname, "augmentation": "paraphrase",
                    "dialogue": dialogue, "summary": summary, "topic": getattr(row, "topic", "")})
    report.made = len(out)
    return pd.DataFrame(out, columns=AUGMENTED_COLUMNS), report


def rarest_topics(rows: pd.DataFrame, count: int) -> list[str]:
    counts = rows["topic"][rows["topic"] != ""].value_counts(ascending=True, sort=True)
    ordered = sorted(counts.items(), key=lambda item: (item[1], item[0]))
    return [topic for topic, _ in ordered[:count]]


def synthetic(topics: Sequence[str], per_topic: int, complete: Callable[[list[str]], list[str]],
              name: str = "synthetic") -> tuple[pd.DataFrame, AugmentReport]:
    """New dialogue + summary pairs for `topics` (e.g. the rarest); source_fname stays empty and
    fnames are NAME_N."""
    report = AugmentReport("synthetic", source_rows=0)
    jobs = [(topic, i) for topic in topics for i in range(per_topic)]
    outputs = complete([SYNTHETIC_PROMPT.format(topic=topic) + f"\n(변형 {i + 1})" for topic, i in jobs])
    out = []
    for number, ((topic, _), text) in enumerate(zip(jobs, outputs)):
        dialogue, sep, summary = text.partition("SUMMARY:")
        dialogue, summary = dialogue.strip(), summary.strip()
        if not sep or not dialogue or not summary or "#Person1#" not in dialogue:
            report.drop("not a tagged dialogue with a SUMMARY: part")
            continue
        out.append({"fname": f"{name}_{number}", "source_fname": "", "augmentation": "synthetic",
                    "dialogue": dialogue, "summary": summary, "topic": topic})
    report.made = len(out)
    return pd.DataFrame(out, columns=AUGMENTED_COLUMNS), report


def local_generation(max_new_tokens: int = 512) -> Generation:
    """A local generator's decoding: greedy, a light repetition penalty, 4 prompts per batch."""
    return Generation(max_new_tokens=max_new_tokens, repetition_penalty=1.05, temperature=1.0, top_p=1.0,
                      eval_batch_size=4)


def local_completer(model_path: str, max_new_tokens: int = 512, trust_remote_code: bool = False,
                    cache_path: Path | None = None, chunk: int = 32) -> Callable[[list[str]], list[str]]:
    """A generator from a local causal LM (path or hub id): chat template, batched greedy decoding.
    With `cache_path`, outputs are appended every `chunk` prompts, so a killed job resumes."""
    decoding = local_generation(max_new_tokens)  # checked now, before any model loads

    def complete(prompts: list[str]) -> list[str]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def key(prompt: str) -> str:
            return hashlib.sha256(f"{model_path}\n{max_new_tokens}\n{prompt}".encode()).hexdigest()

        cache: dict[str, str] = {}
        if cache_path is not None and Path(cache_path).exists():
            for line in Path(cache_path).read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    cache[entry["key"]] = entry["content"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a kill mid-write
        todo = list(dict.fromkeys(p for p in prompts if key(p) not in cache))
        if todo:
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
                model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            except OSError as error:
                raise CompetitionError(f"cannot load generator model {model_path!r} ({error}); "
                                       f"pass a local model folder or a downloaded hub id") from None
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            for start in tqdm(range(0, len(todo), chunk), desc="generate", unit="chunk", leave=False):
                part = todo[start:start + chunk]
                texts = [render(tokenizer, [{"role": "user", "content": prompt}]) for prompt in part]
                raw = generate(model, tokenizer, texts, decoding, progress=False)
                outputs = [clean_generated(text, cut) for text, cut in raw]
                lines = []
                for prompt, output in zip(part, outputs):
                    cache[key(prompt)] = output
                    lines.append(json.dumps({"key": key(prompt), "content": output}, ensure_ascii=False) + "\n")
                if cache_path is not None:
                    Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
                    with open(cache_path, "a", encoding="utf-8") as out:
                        out.writelines(lines)
        return [cache[key(p)] for p in prompts]

    return complete


def clean_generated(text: str, cut: bool = False) -> str:
    """The shared output cleaner, keeping one line per dialogue turn."""

    return clean_output(text, cut, keep_lines=True)


def api_completer(endpoint, cache_path: Path, max_tokens: int = 1024, temperature: float = 0.7,
                  refresh: bool = False) -> Callable[[list[str]], list[str]]:
    """A generator from an OpenAI-compatible endpoint: cleaned outputs ("" when answered empty
    twice: counted on stderr, not cached, asked again next time); non-empty answers are cached, so a
    killed or stopped run resumes. `refresh` re-sends cached prompts."""

    client = ChatClient(endpoint, cache_path, label="augment", clean=clean_generated, refresh=refresh)

    def complete(prompts: list[str]) -> list[str]:
        bodies = [client.body([{"role": "user", "content": p}], max_tokens=max_tokens, temperature=temperature)
                  for p in prompts]
        outputs = client.complete_many(bodies)
        if client.report.empty:
            print(f"augment: {client.report.empty} of {client.report.requests} answers empty: those rows are "
                  f"dropped, not cached, and asked again on the next run", file=sys.stderr)
        return outputs

    return complete


def write_augmented(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write an augmentation file atomically (temp file + rename), fields quoted as RFC 4180 asks."""

    return atomic_write_csv(path, frame[AUGMENTED_COLUMNS])
