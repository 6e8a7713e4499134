"""kind = "seq2seq": T5/BART-style encoder-decoders (pko-t5, KoBART) fine-tuned in full or with LoRA.

Tags found in the data (#Person1#, #PhoneNumber#, ...) are added to the tokenizer so they stay
whole. workdir holds `checkpoints/` (resumed after a kill), `model/` (safetensors + tokenizer)
and `train.json`; under `accelerate launch` only the main process writes them. `export` copies
`model/` with the model card's lines on loading it.
"""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..models.exporting import GENERATE_CODE, model_generation_config, write_generation_config
from ..models.generation import GenerationReport, encode, finish, generate
from ..models.gguf import is_gguf
from ..models.modeling import (attention_arguments, compute_dtype, load_error, load_tokenizer, lora_config,
                               model_source, resolve_device)
from ..models.params import Generation, Launch, LoRA, Model, Placement, Trainer, added
from ..models.prompts import DEFAULT_MARKER
from ..models.training import (check_mergeable, check_not_a_stray_rank, checkpoint_to_resume, finished_fit,
                               save_training, show_training_progress, trainer_report, trainer_state_step,
                               training_arguments)
from ..models.validation import (callbacks as validation_callbacks, validation_inputs, validation_report,
                                 validation_split)
from .base import Candidate, ExportedModel

_TAG = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")
MODEL_WEIGHTS = "model.safetensors"


@dataclass
class Params(Model, Placement, LoRA, Trainer, Launch, Generation):
    """An encoder-decoder: the shared parts (LoRA used with use_lora only) and its inputs; the
    trainer and generation defaults below are the seq2seq ones (full fine-tune, beam search)."""

    model: str = "paust/pko-t5-large"  # local model folder (config.json + safetensors) or hub id
    use_lora: bool = False  # false: full fine-tune (the seed's winner); true: LoRA, merged when saved
    source_prefix: str = ""  # text put before every dialogue (e.g. "summarize: " for English T5)
    special_tokens: list[str] = field(default_factory=list)  # extra whole tokens; #...# tags in the data are added too
    encoder_max_length: int = 1024  # dialogue tokens; longer dialogues are cut in the middle
    truncation_marker: str = DEFAULT_MARKER  # replaces the cut middle of an over-long dialogue
    decoder_max_length: int = 150  # summary tokens kept for training
    label_smoothing: float = added(0.0)  # label smoothing of the summary tokens' loss (0.1 is common); 0 = off
    weight_decay: float = 0.01  # AdamW weight decay
    # Trainer part, seq2seq defaults
    gradient_checkpointing: bool = False  # recompute activations: less memory, slower
    batch_size: int = 8  # rows per device step
    grad_accumulation: int = 1  # steps per optimizer update
    learning_rate: float = 1e-4  # peak learning rate (LoRA likes ~1e-3)
    epochs: float = 10.0  # passes over the training rows
    warmup: float = 0.05  # warmup: fraction of the updates (<1) or a number of updates (>=1)
    lr_scheduler: str = "linear"  # transformers scheduler name
    save_steps: int = 500  # checkpoint every N updates; a killed run resumes from the last one
    logging_steps: int = 50  # log the loss every N updates
    # Generation part, seq2seq defaults
    eval_batch_size: int = 16  # rows per generation batch (sorted by length)
    num_beams: int = 4  # beam search width
    max_new_tokens: int = 150  # summary length cap in tokens; a cut last sentence is dropped
    no_repeat_ngram_size: int = 3  # forbid repeated n-grams of this size (0 = off)

    def check(self) -> list[str]:
        problems = []
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing = {self.label_smoothing} should be in [0, 1)")
        if is_gguf(self.model):
            problems.append(f"model = {self.model!r}: a .gguf file is read as a causal LM (kinds prompt and qlora); "
                            "give seq2seq a model folder or hub id")
        return problems


def found_tags(rows: pd.DataFrame, more_texts: list[str] = ()) -> list[str]:
    """Every #Tag# in dialogues and summaries (and `more_texts`), sorted."""
    text = "\n".join(rows["dialogue"].tolist() + (rows["summary"].tolist() if "summary" in rows else [])
                     + list(more_texts))
    return sorted(set(_TAG.findall(text)))


class Seq2SeqCandidate(Candidate):
    kind = "seq2seq"
    exports = True  # the trained model folder (any LoRA merged in)

    def __init__(self, name, params, workdir, seed=42, inputs=None):
        super().__init__(name, params, workdir, seed, inputs)
        self.train_report: dict = {}
        self._model = None
        self._tokenizer = None

    @property
    def model_dir(self) -> Path:
        return self.workdir / "model"

    def trained_weights(self) -> Path:
        """The file a finished training saved (with train.json it marks the fold trained)."""
        return self.model_dir / MODEL_WEIGHTS

    def tags(self, train_rows: pd.DataFrame) -> list[str]:
        """Whole tokens to add: #Tags# of every split (a test-only #DateOfBirth# would otherwise be
        split into pieces the model never learnt) and the configured special_tokens."""
        return sorted(set(found_tags(train_rows, self.inputs.vocabulary_texts)) | set(self.params.special_tokens))

    def training_inputs(self) -> dict:
        return {"tags": sorted(set(_TAG.findall("\n".join(self.inputs.vocabulary_texts)))),
                **validation_inputs(self.params, self.inputs.metric)}

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        fingerprint, done = finished_fit(self, train_rows)
        if done is None:
            done = self._train(train_rows, fingerprint)
            self._model = None
        self.train_report = done

    def _encode(self, tokenizer, dialogues: list[str]) -> list[list[int]]:
        """Token ids of source_prefix + dialogue, cut in the middle to encoder_max_length."""

        texts = [self.params.source_prefix + d for d in dialogues]
        return encode(tokenizer, texts, self.params.encoder_max_length, self.params.truncation_marker)[0]

    def _dataset(self, rows: pd.DataFrame, tokenizer):
        """input_ids / attention_mask / labels of `rows` (summaries cut to decoder_max_length)."""
        from datasets import Dataset

        inputs = self._encode(tokenizer, rows["dialogue"].tolist())
        labels = tokenizer(text_target=[str(s).strip() for s in rows["summary"]],
                           max_length=self.params.decoder_max_length, truncation=True)["input_ids"]
        return Dataset.from_dict({"input_ids": inputs, "attention_mask": [[1] * len(i) for i in inputs],
                                  "labels": labels})

    def training_args(self, device: str, validating: bool = False):
        """The Seq2SeqTrainingArguments this candidate trains with."""
        from transformers import Seq2SeqTrainingArguments

        return training_arguments(Seq2SeqTrainingArguments, self.params, self.workdir, self.seed, device, validating,
                                  label_smoothing_factor=self.params.label_smoothing)

    def _summariser(self, eval_rows: pd.DataFrame, tokenizer):
        """(model -> greedy summaries, references) of up to eval_generate_rows validation rows."""

        params = self.params
        rows = eval_rows.head(params.eval_generate_rows)
        if not len(rows) or params.eval_metric != "rouge_final":
            return None, []
        dialogues = rows["dialogue"].tolist()
        texts = [params.source_prefix + d for d in dialogues]
        greedy = Generation(max_new_tokens=params.max_new_tokens, eval_batch_size=params.eval_batch_size)

        def summarise(model) -> list[str]:
            raw = generate(model, tokenizer, texts, greedy, encoder_decoder=True,
                           max_input_tokens=params.encoder_max_length, marker=params.truncation_marker)
            return finish(raw, dialogues, GenerationReport())

        return summarise, [str(s).strip() for s in rows["summary"]]

    def _train(self, train_rows: pd.DataFrame, fingerprint: str) -> dict:
        from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, set_seed

        params = self.params
        device = resolve_device(params)
        check_not_a_stray_rank()
        tokenizer = load_tokenizer(params)
        set_seed(self.seed)  # the new tags' embeddings (and LoRA matrices) start from the candidate's seed
        tags = self.tags(train_rows)
        new_tags = [t for t in tags if t not in tokenizer.get_vocab()]
        added = tokenizer.add_tokens(new_tags)
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(model_source(params), use_safetensors=True,
                                                          trust_remote_code=params.trust_remote_code,
                                                          **attention_arguments(params))
        except (OSError, ValueError, ImportError) as error:
            raise load_error(params, error) from None
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        if params.use_lora:
            from peft import get_peft_model

            config = lora_config(params, task_type="SEQ_2_SEQ_LM")
            if added:  # LoRA alone would leave the new tags' embeddings at their initial values
                config.trainable_token_indices = tokenizer.convert_tokens_to_ids(new_tags)
            model = get_peft_model(model, config)

        fit_rows, eval_rows = validation_split(train_rows, params.eval_rows, self.seed, self.inputs.row_groups)
        validating = bool(len(eval_rows))
        args = self.training_args(device, validating)
        last = checkpoint_to_resume(args, fingerprint)
        summarise, references = self._summariser(eval_rows, tokenizer)
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=self._dataset(fit_rows, tokenizer),
                                 eval_dataset=self._dataset(eval_rows, tokenizer) if validating else None,
                                 processing_class=tokenizer,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                                 callbacks=[*(validation_callbacks(params, summarise, references, self.inputs.metric)
                                              if validating else []), *self.inputs.trainer_callbacks])
        show_training_progress(trainer)
        if params.use_lora:
            check_mergeable(trainer)  # before training, not after hours of it
        resumed_from = trainer_state_step(last) if last else 0
        trainer.train(resume_from_checkpoint=last)
        report = trainer_report(trainer, fingerprint, resumed_from, train_rows=len(fit_rows), added_tokens=added,
                                tags=tags, **validation_report(trainer, eval_rows, params))
        # model.safetensors (LoRA merged in) + the tokenizer with the added tags; the best checkpoint's
        # weights when validating (the trainer reloaded them at the end)
        save_training(trainer, self.workdir, self.trained_weights(), report, device, merge_lora=params.use_lora)
        return report

    def load(self):
        """(model, tokenizer): the fine-tuned model in workdir, else the base model untrained."""
        if self._model is None:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            device = resolve_device(self.params)
            trained = self.trained_weights().exists()
            source = str(self.model_dir) if trained else model_source(self.params)
            try:
                tokenizer = AutoTokenizer.from_pretrained(source) if trained else load_tokenizer(self.params)
                model = AutoModelForSeq2SeqLM.from_pretrained(source, use_safetensors=True,
                                                              dtype=compute_dtype(device),
                                                              trust_remote_code=self.params.trust_remote_code,
                                                              **attention_arguments(self.params))
            except (OSError, ValueError, ImportError) as error:
                raise load_error(self.params, error) from None
            self._model, self._tokenizer = model.to(device), tokenizer
        return self._model, self._tokenizer

    def predict(self, rows: pd.DataFrame) -> list[str]:
        if len(rows) == 0:
            return []
        model, tokenizer = self.load()
        report = GenerationReport()
        texts = [self.params.source_prefix + d for d in rows["dialogue"]]
        raw = generate(model, tokenizer, texts, self.params, encoder_decoder=True,
                       max_input_tokens=self.params.encoder_max_length, marker=self.params.truncation_marker,
                       report=report)
        summaries = finish(raw, rows["dialogue"].tolist(), report)
        self.report = asdict(report)
        if report.inputs_truncated or report.empty_to_lead:
            print(f"{self.name}: {report.rows} rows, {report.inputs_truncated} dialogues cut in the middle, "
                  f"{report.empty_to_lead} empty outputs replaced by lead", file=sys.stderr)
        return summaries

    def export(self, folder: Path, decoding, merge: bool = False, dtype: str = "bfloat16") -> ExportedModel:
        """The trained model folder as saved (weights with any LoRA merged in, the tokenizer with the
        added tags); `merge` and `dtype` change nothing (a LoRA was merged when training saved)."""
        from transformers import AutoTokenizer

        for path in self.model_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, folder / path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        generation = write_generation_config(model_generation_config(str(self.model_dir)), tokenizer, decoding,
                                             folder)
        merged = bool(self.params.use_lora)
        card = ("## Load and generate", "", "```python",
                "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig",
                "model = AutoModelForSeq2SeqLM.from_pretrained(EXPORT_DIR)", *GENERATE_CODE, "```", "",
                f"Inputs are `source_prefix + dialogue` (source_prefix = {self.params.source_prefix!r}), cut in the "
                f"middle to {self.params.encoder_max_length} tokens.", "")
        description = "the base model with the LoRA adapter merged in" if merged else "the fine-tuned model"
        return ExportedModel(what="merged model" if merged else "model", description=description,
                             generation=generation, merged=merged, card=card)


CANDIDATE = Seq2SeqCandidate
