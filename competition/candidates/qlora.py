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
                        trainer_state_step)
from . import prompt
from .prompt import PromptCandidate


@dataclass
class Params(prompt.Params):
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    target_modules: str | list[str] = "all-linear"  # "all-linear" or module names like ["q_proj", "v_proj"]
    gradient_checkpointing: bool = True  # recompute activations: much less memory, ~30% slower
    prepare_kbit: bool = True  # 4bit/8bit: peft's prepare_model_for_kbit_training (fp32 norms, input grads); false saves memory
    batch_size: int = 1  # rows per device step
    grad_accumulation: int = 8  # steps per optimizer update (effective batch = batch_size x this)
    learning_rate: float = 2e-4  # peak learning rate
    epochs: float = 1.0  # passes over the training rows
    max_steps: int = -1  # >0: stop after this many optimizer updates (overrides epochs)
    warmup: float = 0.03  # warmup: fraction of the updates (<1) or a number of updates (>=1)
    lr_scheduler: str = "cosine"  # transformers scheduler name
    group_by_length: bool = True  # batch rows of similar length together (less padding)
    packing: bool = False  # pack several rows per sequence (needs flash attention to keep rows apart)
    save_steps: int = 100  # checkpoint every N updates; a killed run resumes from the last one
    logging_steps: int = 10  # log the loss every N updates
    launcher: str = "none"  # "accelerate": train under `accelerate launch` (all GPUs of a machine; see README)
    num_processes: int = 1  # launcher = "accelerate": processes (= GPUs) for this fold's training
    accelerate_config: str = ""  # launcher = "accelerate": accelerate config file (FSDP/DeepSpeed); "" = DDP


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

        config = SFTConfig(
            output_dir=str(self.workdir / "checkpoints"), per_device_train_batch_size=params.batch_size,
            gradient_accumulation_steps=params.grad_accumulation, learning_rate=params.learning_rate,
            num_train_epochs=params.epochs, max_steps=params.max_steps, warmup_steps=params.warmup,
            lr_scheduler_type=params.lr_scheduler, logging_steps=params.logging_steps, save_steps=params.save_steps,
            save_total_limit=2, seed=self.seed, data_seed=self.seed, bf16=device == "cuda", use_cpu=device == "cpu",
            activation_checkpointing=params.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            train_sampling_strategy="group_by_length" if params.group_by_length else "random",
            max_length=params.max_length, packing=params.packing, completion_only_loss=True,
            report_to="none", dataloader_pin_memory=device == "cuda", disable_tqdm=False)
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
