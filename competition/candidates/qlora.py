"""kind = "qlora": a causal LM (Qwen3, SOLAR, ...) quantized with bitsandbytes and fine-tuned with
LoRA through trl's SFTTrainer on prompt/completion pairs (loss on the summary only).

workdir holds `checkpoints/` (resumed after a kill), `adapter/` (safetensors) and `train.json`.
Under `accelerate launch` every rank trains; only the main process writes files.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..training import (check_not_a_stray_rank, checkpoint_to_resume, finished_fit, save_training, trainer_report,
                        trainer_state_step, training_arguments)
from . import prompt
from .parts import Launch, LoRA, Trainer
from .prompt import PromptCandidate


@dataclass
class Params(prompt.Params, LoRA, Trainer, Launch):
    """The prompt kind's parts plus LoRA, trainer and launcher parts."""

    prepare_kbit: bool = True  # 4bit/8bit: peft's prepare_model_for_kbit_training (fp32 norms, input grads); false saves memory
    packing: bool = False  # pack several rows per sequence (needs flash attention to keep rows apart)


ADAPTER_WEIGHTS = "adapter_model.safetensors"


class QLoRACandidate(PromptCandidate):
    kind = "qlora"

    def __init__(self, name, params, workdir, seed=42):
        super().__init__(name, params, workdir, seed)
        self.callbacks: list = []  # extra transformers TrainerCallbacks (tests stop training with one)
        self.train_report: dict = {}

    def adapter_dir(self) -> Path | None:
        return self.workdir / "adapter"

    def trained_weights(self) -> Path:
        """The file a finished training saved (with train.json it marks the fold trained)."""
        return self.adapter_dir() / ADAPTER_WEIGHTS

    def training_pairs(self, train_rows: pd.DataFrame, tokenizer) -> tuple[list[dict], int]:
        """(prompt/completion pairs, rows dropped because prompt + summary exceed max_length)."""
        from ..prompts import FewShotIndex, PromptBuilder, PromptTemplate

        dialogues = train_rows["dialogue"].tolist()
        topics = train_rows["topic"].fillna("").tolist() if "topic" in train_rows else [""] * len(train_rows)
        examples = FewShotIndex.from_rows(train_rows).nearest(dialogues, self.params.few_shot)
        template = PromptTemplate.from_params(self.params)
        pairs, dropped = [], 0
        for dialogue, topic, summary, shots in zip(dialogues, topics, train_rows["summary"].tolist(), examples):
            completion = str(summary).strip()
            summary_tokens = len(tokenizer(completion + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            builder = PromptBuilder(tokenizer, template, self.params.max_length - summary_tokens)
            text = builder.prompt(dialogue, topic, shots)
            if builder.truncated:  # training on a cut dialogue teaches the model to invent the middle
                dropped += 1
                continue
            pairs.append({"prompt": text, "completion": completion})
        return pairs, dropped

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        from ..modeling import is_main_process, resolve_device

        fingerprint, done = finished_fit(self, train_rows)
        if done is None:
            done = self._train(train_rows, fingerprint)
            self._model = None  # prediction reloads the base model with the new adapter
        self.train_report = done
        if is_main_process(resolve_device(self.params)):
            super().fit(train_rows, fold)  # few-shot examples for prediction

    def _train(self, train_rows: pd.DataFrame, fingerprint: str) -> dict:
        from datasets import Dataset
        from transformers import set_seed
        from trl import SFTConfig, SFTTrainer

        from ..errors import DataError
        from ..modeling import load_causal_lm, load_tokenizer, lora_model, resolve_device

        params = self.params
        device = resolve_device(params)
        check_not_a_stray_rank()
        tokenizer = load_tokenizer(params)
        pairs, dropped = self.training_pairs(train_rows, tokenizer)
        if dropped:
            print(f"{self.name}: dropped {dropped} of {len(train_rows)} training rows longer than "
                  f"max_length={params.max_length} tokens", file=sys.stderr)
        if not pairs:
            raise DataError(f"{self.name}: every training row is longer than max_length={params.max_length}: "
                            "raise max_length in competition.toml")

        config = training_arguments(
            SFTConfig, params, self.workdir, self.seed, device,
            activation_checkpointing_kwargs={"use_reentrant": False}, max_length=params.max_length,
            packing=params.packing, completion_only_loss=True, disable_tqdm=False)
        last = checkpoint_to_resume(config, fingerprint)
        set_seed(self.seed)  # LoRA's A matrices are drawn when the adapter is built, before the trainer seeds
        model = lora_model(load_causal_lm(params, device), params)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer, callbacks=list(self.callbacks))
        resumed_from = trainer_state_step(last) if last else 0
        trainer.train(resume_from_checkpoint=last)
        report = trainer_report(trainer, fingerprint, resumed_from, train_rows=len(pairs), dropped_too_long=dropped)
        # adapter_model.safetensors + adapter_config.json + tokenizer, gathered from every rank
        save_training(trainer, self.workdir, self.trained_weights(), report, device)
        return report


CANDIDATE = QLoRACandidate
