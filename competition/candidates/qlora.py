"""kind = "qlora": a causal LM (Qwen3, SOLAR, ...) quantized with bitsandbytes and fine-tuned with
LoRA through trl's SFTTrainer on prompt/completion pairs (loss on the summary only).

workdir holds `checkpoints/` (resumed after a kill), `adapter/` (safetensors) and `train.json`.
Under `accelerate launch` every rank trains; only the main process writes files. `export` writes
the adapter (or the base with it merged in) and the model card's lines on loading and prompting it.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import prompt
from ..errors import ConfigError, DataError
from ..models.exporting import (GENERATE_CODE, base_arguments, model_generation_config, prompt_function,
                                write_generation_config)
from ..models.generation import GenerationReport, finish, generate
from ..models.modeling import (is_main_process, load_causal_lm, load_tokenizer, lora_model, merged_causal_lm,
                               model_source, note_dequantised, predicts_dequantised, resolve_device, rows_kept_apart)
from ..models.params import Generation, Inference, Launch, LoRA, Trainer, added
from ..models.prompts import FewShotIndex, PromptBuilder, PromptTemplate
from ..models.training import (check_not_a_stray_rank, checkpoint_to_resume, finished_fit, save_training,
                               show_training_progress, trainer_report, trainer_state_step, training_arguments)
from ..models.validation import (callbacks as validation_callbacks, validation_inputs, validation_report,
                                 validation_split)
from .base import ExportedModel
from .prompt import PromptCandidate


@dataclass
class Params(prompt.Params, LoRA, Trainer, Launch, Inference):
    """The prompt kind's parts plus LoRA, trainer, launcher and inference parts."""

    prepare_kbit: bool = True  # 4bit/8bit: peft's prepare_model_for_kbit_training (fp32 norms, input grads); false saves memory
    packing: bool = False  # pack several rows per sequence (refused when the model cannot keep packed rows apart)
    padding_free: bool = added(False)  # one unpadded sequence per batch (refused when the model cannot keep rows apart)
    neftune_noise_alpha: float = added(0.0)  # NEFTune: noise on the input embeddings while training (5-15); 0 = off

    def check(self) -> list[str]:
        if self.neftune_noise_alpha < 0:
            return [f"neftune_noise_alpha = {self.neftune_noise_alpha} should be 0 (off) or more"]
        return []


ADAPTER_WEIGHTS = "adapter_model.safetensors"


class QLoRACandidate(PromptCandidate):
    kind = "qlora"
    exports = True  # the LoRA adapter, or the base with it merged in

    def __init__(self, name, params, workdir, seed=42, inputs=None):
        super().__init__(name, params, workdir, seed, inputs)
        self.train_report: dict = {}

    def adapter_dir(self) -> Path | None:
        return self.workdir / "adapter"

    def trained_weights(self) -> Path:
        """The file a finished training saved (with train.json it marks the fold trained)."""
        return self.adapter_dir() / ADAPTER_WEIGHTS

    def training_inputs(self) -> dict:
        return validation_inputs(self.params, self.inputs.metric)

    def load_model(self, device: str):
        """The base with the trained adapter: through 4-bit layers, or merged into a dequantised
        copy (faster kernels, the memory of a 16-bit model) with merge_for_inference, and always
        without CUDA (modeling.predicts_dequantised)."""

        dequantised = predicts_dequantised(self.params, device)
        if self.trained_weights().exists() and (dequantised or self.params.merge_for_inference):
            if dequantised:
                note_dequantised(self.name, self.params)
            return merged_causal_lm(self.params, device, self.adapter_dir())
        return load_causal_lm(self.params, device, adapter=self.adapter_dir())

    def training_pairs(self, train_rows: pd.DataFrame, tokenizer,
                       shots_from: pd.DataFrame | None = None) -> tuple[list[dict], int]:
        """(prompt/completion pairs, rows dropped because prompt + summary exceed max_length).
        Few-shot examples come from `shots_from` (validation rows take them from the rows that train)."""

        dialogues = train_rows["dialogue"].tolist()
        topics = train_rows["topic"].fillna("").tolist() if "topic" in train_rows else [""] * len(train_rows)
        pool = train_rows if shots_from is None else shots_from
        examples = FewShotIndex.from_rows(pool).nearest(dialogues, self.params.few_shot)
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

    def training_args(self, device: str, validating: bool = False):
        """The SFTConfig this candidate trains with (every Trainer, LoRA-side and trl setting)."""
        from trl import SFTConfig

        params = self.params
        # Unpacked padding-free batches are not truncated by trl, which refuses a max_length then: the
        # pairs already fit it (longer rows are dropped in training_pairs).
        unpacked_padding_free = params.padding_free and not params.packing
        return training_arguments(
            SFTConfig, params, self.workdir, self.seed, device, validating,
            activation_checkpointing_kwargs={"use_reentrant": False},
            max_length=None if unpacked_padding_free else params.max_length,
            packing=params.packing, padding_free=params.padding_free,
            neftune_noise_alpha=params.neftune_noise_alpha or None, completion_only_loss=True)

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        fingerprint, done = finished_fit(self, train_rows)
        if done is None:
            done = self._train(train_rows, fingerprint)
            self._model = None  # prediction reloads the base model with the new adapter
        self.train_report = done
        if is_main_process(resolve_device(self.params)):
            super().fit(train_rows, fold)  # few-shot examples for prediction

    def _summariser(self, eval_rows: pd.DataFrame, fit_rows: pd.DataFrame, tokenizer):
        """(model -> greedy summaries, references) of up to eval_generate_rows validation rows,
        prompted as prediction prompts them (few-shot examples from the rows that train)."""

        params = self.params
        rows = eval_rows.head(params.eval_generate_rows)
        if not len(rows) or params.eval_metric != "rouge_final":
            return None, []
        dialogues = rows["dialogue"].tolist()
        topics = rows["topic"].fillna("").tolist() if "topic" in rows else [""] * len(rows)
        examples = FewShotIndex.from_rows(fit_rows).nearest(dialogues, params.few_shot)
        room = params.max_length - params.max_new_tokens
        builder = PromptBuilder(tokenizer, PromptTemplate.from_params(params), room)
        prompts = [builder.prompt(d, t, e) for d, t, e in zip(dialogues, topics, examples)]
        greedy = Generation(max_new_tokens=params.max_new_tokens, eval_batch_size=params.eval_batch_size)

        def summarise(model) -> list[str]:
            side = tokenizer.padding_side
            raw = generate(model, tokenizer, prompts, greedy)
            tokenizer.padding_side = side  # the trainer's collator pads on its side again
            return finish(raw, dialogues, GenerationReport())

        return summarise, [str(s).strip() for s in rows["summary"]]

    def _train(self, train_rows: pd.DataFrame, fingerprint: str) -> dict:
        from datasets import Dataset
        from transformers import set_seed
        from trl import SFTTrainer

        params = self.params
        device = resolve_device(params)
        check_not_a_stray_rank()
        tokenizer = load_tokenizer(params)
        fit_rows, eval_rows = validation_split(train_rows, params.eval_rows, self.seed, self.inputs.row_groups)
        pairs, dropped = self.training_pairs(fit_rows, tokenizer)
        if dropped:
            print(f"{self.name}: dropped {dropped} of {len(fit_rows)} training rows longer than "
                  f"max_length={params.max_length} tokens", file=sys.stderr)
        if not pairs:
            raise DataError(f"{self.name}: every training row is longer than max_length={params.max_length}: "
                            "raise max_length in competition.toml")
        eval_pairs = self.training_pairs(eval_rows, tokenizer, shots_from=fit_rows)[0] if len(eval_rows) else []
        config = self.training_args(device, validating=bool(eval_pairs))
        set_seed(self.seed)  # LoRA's A matrices are drawn when the adapter is built, before the trainer seeds
        model = lora_model(load_causal_lm(params, device), params)
        if (params.packing or params.padding_free) and not rows_kept_apart(model, tokenizer):
            setting = "packing" if params.packing else "padding_free"
            raise ConfigError(f"{self.name}: {setting} = true, but model {params.model!r} lets rows packed into one "
                              "sequence attend to each other (a row's logits change when another row precedes it): "
                              "set packing = false and padding_free = false, or use a model whose masks keep them "
                              "apart from position_ids (Qwen, Llama, Mistral, ...)")
        last = checkpoint_to_resume(config, fingerprint)
        summarise, references = self._summariser(eval_rows, fit_rows, tokenizer) if eval_pairs else (None, [])
        if summarise is not None and predicts_dequantised(params, device):  # prediction's float copy is not at hand
            print(f"{self.name}: validation generates {len(references)} greedy summaries every "
                  f"{params.eval_steps or params.save_steps} steps through the {params.quantization} layers, many "
                  "times slower without CUDA (SmolLM2-135M on 2 cores: minutes per validation); eval_metric = "
                  "\"loss\" or a smaller eval_generate_rows keeps validation cheap", file=sys.stderr)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                             eval_dataset=Dataset.from_list(eval_pairs) if eval_pairs else None,
                             processing_class=tokenizer,
                             callbacks=[*(validation_callbacks(params, summarise, references, self.inputs.metric)
                                          if eval_pairs else []), *self.inputs.trainer_callbacks])
        show_training_progress(trainer)
        resumed_from = trainer_state_step(last) if last else 0
        trainer.train(resume_from_checkpoint=last)
        report = trainer_report(trainer, fingerprint, resumed_from, train_rows=len(pairs), dropped_too_long=dropped,
                                **validation_report(trainer, eval_rows if eval_pairs else eval_rows.iloc[:0], params))
        # adapter_model.safetensors + adapter_config.json + tokenizer, gathered from every rank; the best
        # checkpoint's weights when validating (the trainer reloaded them at the end)
        save_training(trainer, self.workdir, self.trained_weights(), report, device)
        return report

    def export(self, folder: Path, decoding, merge: bool = False, dtype: str = "bfloat16") -> ExportedModel:
        """The adapter as trained (with the tokenizer saved beside it), or with `merge` the base with
        the adapter merged in: merged in float32 (a 4-bit base dequantised first, as peft advises,
        since merging into 4-bit layers rounds), then cast to `dtype`, so the rounding happens once."""

        params = self.params
        tokenizer = load_tokenizer(params, str(self.adapter_dir()))  # the tokenizer saved with the adapter
        if merge:
            import torch

            merged = merged_causal_lm(params, resolve_device(params), self.adapter_dir(), torch.float32)
            merged = merged.to(getattr(torch, dtype))
            merged.save_pretrained(str(folder))
            tokenizer.save_pretrained(str(folder))
            generation_config = merged.generation_config
        else:
            for path in self.adapter_dir().iterdir():
                if path.is_file():
                    shutil.copy2(path, folder / path.name)
            tokenizer.save_pretrained(str(folder))
            generation_config = model_generation_config(model_source(params))
        generation = write_generation_config(generation_config, tokenizer, decoding, folder)
        return ExportedModel(what="merged model" if merge else "adapter",
                             description=("the base model with the LoRA adapter merged in" if merge
                                          else "the LoRA adapter as trained"),
                             generation=generation, library="transformers" if merge else "peft", merged=merge,
                             dtype=dtype if merge else None, card=self.card_lines(merge))

    def card_lines(self, merged: bool) -> tuple[str, ...]:
        """The model card's note on a dequantised merge, its load-and-generate code and the exact prompt."""

        params = self.params
        lines = []
        if merged and params.quantization != "none":
            lines += [f"The {params.quantization} base was dequantised before merging; the merged weights can differ "
                      "from the quantized model's outputs by rounding.", ""]
        lines += ["## Load and generate", "", "```python"]
        if merged:
            lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig",
                      "model = AutoModelForCausalLM.from_pretrained(EXPORT_DIR)"]
        else:
            lines += ["from peft import PeftModel",
                      "from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig",
                      f"base = AutoModelForCausalLM.from_pretrained({base_arguments(params.model)})"
                      + ("  # trained on its 4-bit NF4 form: pass BitsAndBytesConfig(load_in_4bit=True, "
                         "bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True) to match it"
                         if params.quantization == "4bit" else ""),
                      "model = PeftModel.from_pretrained(base, EXPORT_DIR)"]
        lines += [*GENERATE_CODE, "```", ""]
        lines += ["## Prompt", "",
                  "`competition run` prompted the model with exactly this text (`build_prompt(tokenizer, dialogue)`; "
                  "the tokenizer's chat template when it has one). A dialogue longer than max_length = "
                  f"{params.max_length} tokens less max_new_tokens = {params.max_new_tokens} was cut in the "
                  f"middle, the cut marked by {params.truncation_marker!r}"
                  + (f"; each prompt held the {params.few_shot} most similar training dialogues with their "
                     "summaries as earlier turns (`examples`)" if params.few_shot else "")
                  + ". The output is the new tokens decoded with skip_special_tokens, whitespace collapsed, a "
                  "sentence cut off by max_new_tokens dropped.", "", "```python", prompt_function(params), "```", ""]
        return tuple(lines)


CANDIDATE = QLoRACandidate
