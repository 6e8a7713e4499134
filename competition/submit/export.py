"""`competition export NAME`: one trained model (a fold's or the refit one) as a folder that plain
transformers (+ peft for an adapter) loads and generates with, outside this project.

The folder holds the weights (a qlora adapter; or with `merge` the base model with the adapter
merged in, a 4-bit base dequantised first as peft advises, since merging into 4-bit layers rounds),
the tokenizer (with the #Tags# seq2seq added), generation_config.json with the decoding `competition
run` used (NAME@tuned's setting when it is current) and README.md, a model card with the config,
data hashes and CV scores. It is written beside its final place and renamed, so a kill leaves
the previous export or none.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..candidates import candidate_class
from ..data.predictions import fold_dir, load_meta, run_dir
from ..errors import CompetitionError, UnknownCandidate
from ..models.generation import decoding_kwargs
from ..models.gguf import is_gguf
from ..models.modeling import load_tokenizer, merged_causal_lm, model_source, resolve_device
from ..models.prompts import PromptTemplate
from ..results.cv import leaderboard
from ..results.provenance import (INPUT_KEYS, TUNED_SUFFIX, candidate_seed, candidate_settings, source_problems,
                                  workspace_inputs)
from ..stages.search import LENGTH_KEYS

EXPORTS_DIR = "exports"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
TRAINED_KINDS = ("qlora", "seq2seq")


class ExportError(CompetitionError):
    """Nothing to export (kind without weights, fold not trained) or a bad option."""


@dataclass
class ExportReport:
    """What an export wrote."""

    path: Path
    name: str
    kind: str
    model: str  # "fold 0" ... or "refit"
    merged: bool
    dtype: str | None  # the merged weights' dtype (None: an adapter, or the trained weights as saved)
    generation: dict = field(default_factory=dict)  # generation_config.json's settings
    tuned: bool = False  # the settings are NAME@tuned's
    files: list[str] = field(default_factory=list)


def check_trains(config, name: str):
    """The candidate's config, refusing kinds that train no weights."""
    candidate = config.candidate(name)
    if candidate.kind not in TRAINED_KINDS:
        raise ExportError(f"{name!r} is kind {candidate.kind!r}, which trains no weights: export works for "
                          f"{' and '.join(TRAINED_KINDS)} candidates")
    return candidate


def trained_candidate(config, name: str, fold: int | None):
    """The candidate object of a trained fold (None: the refit model), refusing kinds without
    weights and models not trained yet."""

    candidate = check_trains(config, name)
    folder = (run_dir(config, name) / "refit" if fold is None else fold_dir(config, name, fold)) / "work"
    instance = candidate_class(candidate.kind)(name, candidate.params, folder, candidate_seed(config, name))
    if not instance.trained_weights().exists() or not (folder / "train.json").exists():
        trained = sorted(int(path.parent.parent.name.split("_")[1])
                         for path in run_dir(config, name).glob("fold_*/work/train.json"))
        which = "the refit model" if fold is None else f"fold {fold}"
        choices = (f"trained folds: {', '.join(map(str, trained))} (--fold K)" if trained
                   else f"run `competition run {name}` first")
        raise ExportError(f"{name}: {which} has no finished training under {folder}: {choices}")
    return instance


def default_fold(config, name: str) -> int | None:
    """The refit model when there is one, else the lowest trained fold."""

    check_trains(config, name)
    if (run_dir(config, name) / "refit" / "work" / "train.json").exists():
        return None
    trained = sorted(int(path.parent.parent.name.split("_")[1])
                     for path in run_dir(config, name).glob("fold_*/work/train.json"))
    if not trained:
        raise ExportError(f"{name}: no trained fold or refit model under {run_dir(config, name)}: "
                          f"run `competition run {name}` first")
    return trained[0]


def decoding_params(config, name: str) -> tuple[object, bool, str]:
    """(params with NAME@tuned's setting applied when it is current, tuned?, a note for the card)."""

    params = config.candidate(name).params
    tuned = load_meta(config, name + TUNED_SUFFIX)
    if not tuned or not tuned.get("setting"):
        return params, False, ""
    hashes, k = workspace_inputs(config)
    problems = source_problems(config, name + TUNED_SUFFIX, hashes, k)
    if problems:
        return params, False, f"{name}{TUNED_SUFFIX} is not current ({'; '.join(problems)}): its setting is not used"
    setting = {key: value for key, value in tuned["setting"].items() if key not in LENGTH_KEYS}
    note = ""
    if tuned["setting"].get("length_control", "fixed") == "dynamic":
        note = (f"{name}{TUNED_SUFFIX} sets max/min_new_tokens per dialogue length (length_control = dynamic), "
                "which one generation config cannot hold: the fixed settings below are used")
    return dataclasses.replace(params, **setting), True, note


def export_model(config, name: str, fold: int | None = None, out: Path | None = None, merge: bool = False,
                 dtype: str = "bf16") -> ExportReport:
    """Write the export of `name`'s fold `fold` (None: the refit model) to `out` (default
    exports/NAME/fold_K or exports/NAME/refit) and return what it wrote."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: choose {', '.join(DTYPES)}")
    instance = trained_candidate(config, name, fold)
    label = "refit" if fold is None else f"fold {fold}"
    out = Path(out) if out is not None else config.resolve(EXPORTS_DIR) / name / label.replace(" ", "_")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    params, tuned, note = decoding_params(config, name)
    if instance.kind == "qlora":
        generation_config, tokenizer, merged = _qlora_weights(instance, partial, merge, dtype)
    else:
        generation_config, tokenizer, merged = _seq2seq_weights(instance, partial)
    generation = _write_generation_config(generation_config, tokenizer, params, partial)
    report = ExportReport(path=out, name=name, kind=instance.kind, model=label, merged=merged,
                          dtype=DTYPES[dtype] if merge and instance.kind == "qlora" else None,
                          generation=generation, tuned=tuned)
    (partial / "README.md").write_text(model_card(config, name, fold, instance, report, note), encoding="utf-8")
    report.files = sorted(path.name for path in partial.iterdir())
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return report


def _qlora_weights(instance, folder: Path, merge: bool, dtype: str):
    """(generation config, tokenizer, merged?) after writing the adapter as trained, or the base
    with it merged in (a quantized base dequantised first)."""

    params = instance.params
    tokenizer = load_tokenizer(params, str(instance.adapter_dir()))  # the tokenizer saved with the adapter
    if not merge:
        for path in instance.adapter_dir().iterdir():
            if path.is_file():
                shutil.copy2(path, folder / path.name)
        tokenizer.save_pretrained(str(folder))
        return _generation_config(model_source(params)), tokenizer, False
    import torch

    # Merged in float32 (a 4-bit base dequantised first), then cast: the rounding happens once, at the end.
    merged = merged_causal_lm(params, resolve_device(params), instance.adapter_dir(), torch.float32)
    merged = merged.to(getattr(torch, DTYPES[dtype]))
    merged.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return merged.generation_config, tokenizer, True


def _seq2seq_weights(instance, folder: Path):
    """(generation config, tokenizer, merged?) after copying the trained model folder as saved
    (weights with any LoRA merged in, tokenizer with the added tags)."""
    from transformers import AutoTokenizer

    for path in instance.model_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(instance.model_dir))
    return _generation_config(str(instance.model_dir)), tokenizer, bool(instance.params.use_lora)


def _generation_config(source: str):
    """A model folder's (or hub id's) generation config, from its config.json when it has no
    generation_config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(source))


def _write_generation_config(generation_config, tokenizer, params, folder: Path) -> dict:
    """generation_config.json: the model's own, with the decoding `competition run` passes."""

    settings = decoding_kwargs(params, tokenizer, generation_config)
    generation_config.update(**settings)
    generation_config.save_pretrained(str(folder))
    return settings


def model_card(config, name: str, fold: int | None, instance, report: ExportReport, note: str) -> str:
    """README.md of an export: what it is, how to load it, the config, data hashes and scores."""

    meta = load_meta(config, name, fold) if fold is not None else load_meta(config, name)
    train = json.loads((instance.workdir / "train.json").read_text(encoding="utf-8"))
    scores = _scores(config, name)
    params = instance.params
    adapter = instance.kind == "qlora" and not report.merged
    library = "peft" if adapter else "transformers"
    lines = ["---", f"library_name: {library}", f"base_model: {params.model}", "tags: [summarization, korean]", "---",
             "", f"# {name} ({report.model})", "",
             f"A `{instance.kind}` candidate of the Korean dialogue summarization competition toolkit, exported by "
             f"`competition export {name}`: "
             + ("the LoRA adapter as trained" if adapter else
                "the base model with the LoRA adapter merged in" if report.merged else "the fine-tuned model")
             + (f" ({report.dtype})" if report.dtype else "") + f", trained on {train.get('train_rows')} rows.", ""]
    if report.merged and params.quantization != "none":
        lines += [f"The {params.quantization} base was dequantised before merging; the merged weights can differ "
                  "from the quantized model's outputs by rounding.", ""]
    lines += ["## Load and generate", "", "```python"]
    if adapter:
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig",
                  f"base = AutoModelForCausalLM.from_pretrained({base_arguments(params.model)})"
                  + ("  # trained on its 4-bit NF4 form: pass BitsAndBytesConfig(load_in_4bit=True, "
                     "bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True) to match it"
                     if params.quantization == "4bit" else ""),
                  "model = PeftModel.from_pretrained(base, EXPORT_DIR)"]
    else:
        model_class = "AutoModelForCausalLM" if instance.kind == "qlora" else "AutoModelForSeq2SeqLM"
        lines += [f"from transformers import {model_class}, AutoTokenizer, GenerationConfig",
                  f"model = {model_class}.from_pretrained(EXPORT_DIR)"]
    lines += ["tokenizer = AutoTokenizer.from_pretrained(EXPORT_DIR)",
              "output = model.generate(**tokenizer(prompt, return_tensors='pt'), "
              "generation_config=GenerationConfig.from_pretrained(EXPORT_DIR))", "```", ""]
    if instance.kind == "qlora":
        lines += ["## Prompt", "",
                  "`competition run` prompted the model with exactly this text (`build_prompt(tokenizer, dialogue)`; "
                  "the tokenizer's chat template when it has one). A dialogue longer than max_length = "
                  f"{params.max_length} tokens less max_new_tokens = {params.max_new_tokens} was cut in the "
                  f"middle, the cut marked by {params.truncation_marker!r}"
                  + (f"; each prompt held the {params.few_shot} most similar training dialogues with their "
                     "summaries as earlier turns (`examples`)" if params.few_shot else "")
                  + ". The output is the new tokens decoded with skip_special_tokens, whitespace collapsed, a "
                  "sentence cut off by max_new_tokens dropped.", "", "```python", prompt_function(params), "```", ""]
    else:
        lines += [f"Inputs are `source_prefix + dialogue` (source_prefix = {params.source_prefix!r}), cut in the "
                  f"middle to {params.encoder_max_length} tokens.", ""]
    lines += ["## Generation", "", "generation_config.json holds the decoding `competition run` used"
              + (f" (the tuned setting of {name}@tuned)" if report.tuned else "") + ":", "", "```json",
              json.dumps(report.generation, indent=2, sort_keys=True), "```", ""]
    if note:
        lines += [f"Note: {note}.", ""]
    lines += ["## Scores (ROUGE F1 x 100, final = mean of R1, R2, RL)", ""]
    if scores:
        lines += [f"- out-of-fold final, all folds: {_number(scores['oof'])}"
                  + (f" (95% CI {_number(scores['ci95'][0])} to {_number(scores['ci95'][1])})"
                     if scores.get("ci95") and scores["ci95"][0] is not None else ""),
                  f"- test-matched final: {_number(scores['test_matched'])}",
                  f"- folds complete: {scores['folds']}", ""]
    else:
        lines += ["No CV scores: the candidate has no out-of-fold predictions yet.", ""]
    if train.get("curve") and train.get("eval_metric"):
        lines += [f"Validation inside training picked step {train['chosen_step']} of {train['global_step']} by "
                  f"{train['eval_metric']} ({_number(train.get('best_metric'))}).", ""]
    lines += ["## Provenance", "", "| input | sha256 |", "|---|---|"]
    lines += [f"| {key} | {(meta or {}).get(key) or '-'} |" for key in INPUT_KEYS]
    lines += ["", f"Training fingerprint: {train.get('fingerprint')}; config hash: {(meta or {}).get('config_hash')}.",
              "", "## Config", "", "```json",
              json.dumps(candidate_settings(config, name), indent=2, sort_keys=True, ensure_ascii=False, default=str),
              "```", ""]
    return "\n".join(lines)


def base_arguments(model: str) -> str:
    """from_pretrained's arguments for the base model: a GGUF file is read through gguf_file
    (transformers dequantises it, as `competition run` did)."""
    if is_gguf(model):
        path = Path(model).expanduser().resolve()
        return f"{str(path.parent)!r}, gguf_file={path.name!r}"
    return repr(model)


def prompt_function(params) -> str:
    """Python source of `build_prompt(tokenizer, dialogue, topic="", examples=())`: the prompt
    competition.models.prompts builds for these Prompt settings, with nothing of this project (an export's
    user needs the exact text: the fixed labels and the system message change the outputs)."""
    template = PromptTemplate.from_params(params)
    system = f"[{{'role': 'system', 'content': {template.system!r}}}]" if template.system else "[]"
    lines = ["def build_prompt(tokenizer, dialogue, topic='', examples=()):",
             "    \"\"\"examples: dicts with dialogue, summary (and topic) shown first, most similar first.\"\"\"",
             "    def user(text, topic):",
             f"        parts = [{template.instruction!r}]" if template.instruction else "        parts = []"]
    if template.include_topic:
        lines += ["        if topic:", f"            parts.append({template.topic_label + ' '!r} + topic)"]
    lines += [f"        parts.append({template.dialogue_label + chr(10)!r} + text)",
              "        return '\\n\\n'.join(parts)",
              "",
              f"    messages = {system}",
              "    for shot in examples:",
              "        messages += [{'role': 'user', 'content': user(shot['dialogue'], shot.get('topic', ''))},",
              "                     {'role': 'assistant', 'content': shot['summary']}]",
              "    messages.append({'role': 'user', 'content': user(dialogue, topic)})",
              "    if tokenizer.chat_template:",
              "        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,",
              "                                             enable_thinking=False)",
              "        bos = tokenizer.bos_token  # the tokenizer adds BOS itself where the model wants one",
              "        if bos and text.startswith(bos) and tokenizer('')['input_ids'][:1] == [tokenizer.bos_token_id]:",
              "            text = text[len(bos):]",
              "        return text",
              "    # no chat template: plain text, each example's summary after the label that ends the prompt",
              f"    blocks = [{template.summary_label + ' '!r} + m['content'] if m['role'] == 'assistant' "
              "else m['content'] for m in messages]",
              f"    return '\\n\\n'.join(blocks) + {chr(10) * 2 + template.summary_label!r}"]
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _scores(config, name: str) -> dict | None:
    """The leaderboard's OOF and test-matched finals of `name` (None without predictions)."""

    try:
        entry = leaderboard(config, [name])[0]
    except UnknownCandidate:
        return None
    matched = entry.get("test_matched") or {}
    return {"oof": entry["oof"]["final"], "ci95": entry.get("ci95"), "test_matched": matched.get("final"),
            "folds": f"{entry['folds_done']}/{entry['k']}"}
