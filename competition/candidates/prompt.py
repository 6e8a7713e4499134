"""kind = "prompt": an untrained causal LM, zero- or few-shot, with the shared batched generation.

`qlora` extends this kind with LoRA training; prediction is the same code for both.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..models.generation import GenerationReport, finish, generate
from ..models.modeling import (dequantised_causal_lm, load_causal_lm, load_tokenizer, note_dequantised,
                               predicts_dequantised, resolve_device)
from ..models.params import QUANTIZATIONS, Generation, Model, Placement, Prompt, choice_problem
from ..models.prompts import FewShotIndex, PromptBuilder, PromptTemplate, prompt_inputs
from .base import Candidate


@dataclass
class Params(Model, Placement, Prompt, Generation):
    """An untrained causal LM: model, placement, prompt and generation parts, plus its loading."""

    model: str = "Qwen/Qwen3-0.6B"  # local model folder (config.json + safetensors), .gguf file, or hub id
    quantization: str = "4bit"  # 4bit (NF4, double quant) | 8bit | none
    max_length: int = 4096  # prompt + summary tokens; longer dialogues are cut in the middle

    def check(self) -> list[str]:
        problems = choice_problem("quantization", self.quantization, QUANTIZATIONS)
        if self.max_new_tokens >= self.max_length:
            problems.append(f"max_new_tokens = {self.max_new_tokens} leaves no room for the prompt in "
                            f"max_length = {self.max_length}")
        return problems


class PromptCandidate(Candidate):
    """A causal LM that writes summaries from a prompt; `fit` only keeps few-shot examples."""

    kind = "prompt"

    def __init__(self, name, params, workdir, seed=42, inputs=None):
        super().__init__(name, params, workdir, seed, inputs)
        self._model = None
        self._tokenizer = None

    @property
    def fewshot_path(self) -> Path:
        return self.workdir / "fewshot.jsonl"

    def fit_files(self) -> dict[str, Path]:
        return {"few-shot examples": self.fewshot_path} if self.params.few_shot > 0 else {}

    def adapter_dir(self) -> Path | None:
        """A trained LoRA adapter to attach at prediction (none for an untrained prompt model)."""
        return None

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.params.few_shot > 0:
            FewShotIndex.from_rows(train_rows).save(self.fewshot_path)

    def load(self):
        """(model, tokenizer) for prediction, loaded once per candidate object."""
        if self._model is None:

            device = resolve_device(self.params)
            self._tokenizer = load_tokenizer(self.params)
            self._model = self.load_model(device)
        return self._model, self._tokenizer

    def load_model(self, device: str):
        """The model that predicts: the base as configured (without CUDA a quantized one as float
        layers holding its quantized weights: modeling.predicts_dequantised)."""

        if predicts_dequantised(self.params, device):
            note_dequantised(self.name, self.params)
            return dequantised_causal_lm(self.params, device)
        return load_causal_lm(self.params, device, adapter=self.adapter_dir())

    def prompts(self, rows: pd.DataFrame, tokenizer, max_prompt_tokens: int):
        """(prompt texts, builder) for `rows`, few-shot examples from the saved training rows."""

        dialogues, topics, examples = prompt_inputs(rows, self.params.few_shot, self.fewshot_path)
        builder = PromptBuilder(tokenizer, PromptTemplate.from_params(self.params), max_prompt_tokens)
        texts = [builder.prompt(d, t, e) for d, t, e in zip(dialogues, topics, examples)]
        return texts, builder

    def predict(self, rows: pd.DataFrame) -> list[str]:
        if len(rows) == 0:
            return []
        model, tokenizer = self.load()
        texts, builder = self.prompts(rows, tokenizer, self.params.max_length - self.params.max_new_tokens)
        report = GenerationReport(inputs_truncated=builder.truncated)
        raw = generate(model, tokenizer, texts, self.params, report=report)
        summaries = finish(raw, rows["dialogue"].tolist(), report)
        self.report = asdict(report)
        self._log_report()
        return summaries

    def _log_report(self) -> None:
        report = self.report
        notes = [f"{report[key]} {label}" for key, label in (
            ("inputs_truncated", "dialogues cut in the middle"),
            ("cut_by_max_new_tokens", "outputs cut by max_new_tokens"),
            ("empty_to_lead", "empty outputs replaced by lead")) if report.get(key)]
        if notes:
            print(f"{self.name}: {report['rows']} rows, " + ", ".join(notes), file=sys.stderr)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "predict_log.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(report) + "\n")


CANDIDATE = PromptCandidate
