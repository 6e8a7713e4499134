"""Params composed from shared parts: each field declared by one part (or overridden by a kind),
validated once at config load with every problem reported, the flat TOML keys unchanged."""
from __future__ import annotations

import dataclasses

import pytest

from competition.candidates import KINDS, params_class
from competition.errors import ConfigError
from competition.models.chat import Endpoint
from competition.models.params import Generation, Launch, LoRA, Model, Placement, Prompt, Trainer
from competition.models.training import NOT_TRAINING, training_fingerprint
from competition.workspace.config import parse_config


def config_error(table: dict) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config({"candidates": {"c": table}})
    message = str(error.value)
    assert "\n" not in message
    return message


def load_problems(table: dict) -> str:
    """The one-line config error a candidate table gives at load, "" when it loads."""
    try:
        parse_config({"candidates": {"c": table}})
    except ConfigError as error:
        return str(error)
    return ""


# For each part: a key it checks, a value it refuses, and the problem it reports.
PART_REFUSALS = {
    Model: ("model", "", "model = '' should name a local model folder, a .gguf file or a hub id"),
    Placement: ("device", "tpu", "device = 'tpu' should be one of auto, cuda, cpu"),
    Prompt: ("few_shot", -3, "few_shot = -3 should be 0 or more"),
    Generation: ("num_beams", 0, "num_beams = 0 should be 1 or more"),
    LoRA: ("lora_dropout", 1.0, "lora_dropout = 1.0 should be in [0, 1)"),
    Trainer: ("learning_rate", 0.0, "learning_rate = 0.0 should be more than 0"),
    Launch: ("launcher", "torchrun", "launcher = 'torchrun' should be one of none, accelerate"),
    Endpoint: ("concurrency", 0, "concurrency = 0 should be 1 or more"),
}
# The parts each shipped kind is composed of.
KIND_PARTS = {
    "lead": (), "retrieval": (),
    "prompt": (Model, Placement, Prompt, Generation),
    "qlora": (Model, Placement, Prompt, Generation, LoRA, Trainer, Launch),
    "seq2seq": (Model, Placement, LoRA, Trainer, Launch, Generation),
    "api": (Endpoint, Prompt),
}


def test_every_shipped_kind_is_listed_with_its_parts():
    assert set(KIND_PARTS) == {kind for kind, module in KINDS.items() if module.startswith("competition.candidates.")}


@pytest.mark.parametrize("kind", sorted(KIND_PARTS))
@pytest.mark.parametrize("part", list(PART_REFUSALS), ids=lambda part: part.__name__)
def test_a_part_refuses_its_bad_value_at_load_under_every_kind_that_has_it(kind, part):
    key, bad, problem = PART_REFUSALS[part]
    message = load_problems({"kind": kind, key: bad})
    if part in KIND_PARTS[kind]:
        assert f"[candidates.c] {problem}" in message and "\n" not in message
    else:  # the key is unknown to the kind, or means something else there (api's model: the served name)
        assert problem not in message


def test_flat_toml_keys_still_load_into_the_parts():
    config = parse_config({"candidates": {
        "q": {"kind": "qlora", "lora_r": 8, "num_beams": 2, "launcher": "accelerate", "few_shot": 1, "device": "cpu",
              "batch_size": 2, "model": "some/model"},
        "s": {"kind": "seq2seq", "use_lora": True, "lora_alpha": 8, "weight_decay": 0.1, "no_repeat_ngram_size": 0}}})
    q, s = config.candidates["q"].params, config.candidates["s"].params
    assert (q.lora_r, q.num_beams, q.launcher, q.few_shot, q.device, q.batch_size) == (8, 2, "accelerate", 1, "cpu", 2)
    assert (s.use_lora, s.lora_alpha, s.weight_decay, s.no_repeat_ngram_size) == (True, 8, 0.1, 0)
    # each kind keeps its own defaults for the shared parts
    assert (s.batch_size, s.num_beams, s.learning_rate, q.learning_rate) == (8, 4, 1e-4, 2e-4)


def test_a_qlora_launcher_typo_is_refused_at_config_load():
    """Refused when the config loads, with the choices, before any fold runs."""
    assert "[candidates.c] launcher = 'acelerate' should be one of none, accelerate" in \
        config_error({"kind": "qlora", "launcher": "acelerate"})


def test_every_problem_of_every_part_is_reported_at_once():
    message = config_error({"kind": "qlora", "launcher": "torchrun", "num_beams": 0, "lora_r": 0, "device": "tpu",
                            "quantization": "2bit", "few_shot": -1, "batch_size": 0, "num_processes": 0})
    for expected in ("launcher = 'torchrun' should be one of none, accelerate", "num_beams = 0 should be 1 or more",
                     "lora_r = 0 should be 1 or more", "device = 'tpu' should be one of auto, cuda, cpu",
                     "quantization = '2bit' should be one of 4bit, 8bit, none", "few_shot = -1 should be 0 or more",
                     "batch_size = 0 should be 1 or more", "num_processes = 0 should be 1 or more"):
        assert f"[candidates.c] {expected}" in message, expected


def test_unknown_keys_still_get_the_closest_key():
    assert "unknown key 'lora_rank'; did you mean 'lora_r'?" in config_error({"kind": "seq2seq", "lora_rank": 8})


def test_not_training_is_the_generation_placement_and_inference_fields():
    """Derived from the parts' declarations: the generation, placement and inference fields, and
    merge_for_inference (qlora), which only changes how a trained adapter predicts."""
    assert NOT_TRAINING == {"eval_batch_size", "num_beams", "max_new_tokens", "min_new_tokens",
                            "no_repeat_ngram_size", "length_penalty", "repetition_penalty", "do_sample",
                            "temperature", "top_p", "require_cuda", "device", "num_cpus", "merge_for_inference"}


@pytest.mark.parametrize("kind", ["qlora", "seq2seq"])
def test_generation_edits_keep_the_training_and_trainer_edits_retrain(kind, korean_rows):
    cls = params_class(kind)
    base = training_fingerprint(cls(), korean_rows)
    edits = dict(eval_batch_size=3, num_beams=2, max_new_tokens=40, min_new_tokens=5, no_repeat_ngram_size=2,
                 length_penalty=1.5, repetition_penalty=1.2, do_sample=True, temperature=0.3, top_p=0.5,
                 require_cuda=True, device="cpu", num_cpus=4.0)
    assert set(edits) == {f.name for f in dataclasses.fields(Generation) + dataclasses.fields(Placement)}
    for key, value in edits.items():
        assert training_fingerprint(cls(**{key: value}), korean_rows) == base, key
    for key, value in (("learning_rate", 0.5), ("lora_r", 4), ("batch_size", 3), ("launcher", "accelerate")):
        assert training_fingerprint(cls(**{key: value}), korean_rows) != base, key


def test_the_one_trainer_builder_gives_both_kinds_their_trainer_settings(tmp_path):
    from transformers import Seq2SeqTrainingArguments
    from trl import SFTConfig

    from competition.candidates.qlora import Params as QLoRAParams
    from competition.candidates.seq2seq import Params as Seq2SeqParams
    from competition.models.training import training_arguments

    settings = dict(batch_size=3, grad_accumulation=5, learning_rate=3e-4, epochs=2.0, max_steps=7, warmup=4.0,
                    lr_scheduler="constant", logging_steps=3, save_steps=9, group_by_length=False,
                    gradient_checkpointing=False)
    for args_class, params in ((SFTConfig, QLoRAParams(**settings)),
                               (Seq2SeqTrainingArguments, Seq2SeqParams(**settings))):
        args = training_arguments(args_class, params, tmp_path, seed=11, device="cpu")
        assert isinstance(args, args_class)
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate,
                args.num_train_epochs, args.max_steps, args.warmup_steps, args.lr_scheduler_type.value,
                args.logging_steps, args.save_steps, args.train_sampling_strategy, args.seed, args.data_seed) == \
            (3, 5, 3e-4, 2.0, 7, 4.0, "constant", 3, 9, "random", 11, 11)
        assert args.output_dir == str(tmp_path / "checkpoints") and args.use_cpu and not args.bf16


# -- optimizer, regularisation, attention and LoRA variants: checked at load, on the built objects --

@pytest.mark.parametrize("table, expected", [
    ({"kind": "qlora", "optim": "paged_adamw8bit"},
     "optim = 'paged_adamw8bit' is not a name the installed transformers accepts: did you mean 'paged_adamw_8bit'?"),
    ({"kind": "seq2seq", "optim": "nesterov"}, "optim = 'nesterov' is not a name the installed transformers accepts: "
                                               "choose one of adafactor,"),
    ({"kind": "qlora", "attn_implementation": "flash_attention2"},
     "attn_implementation = 'flash_attention2' is not a name the installed transformers accepts: did you mean "
     "'flash_attention_2'?"),
    ({"kind": "qlora", "max_grad_norm": -0.3}, "max_grad_norm = -0.3 should be 0 or more"),
    ({"kind": "qlora", "weight_decay": -1}, "weight_decay = -1.0 should be 0 or more"),
    ({"kind": "seq2seq", "label_smoothing": 1.0}, "label_smoothing = 1.0 should be in [0, 1)"),
    ({"kind": "qlora", "neftune_noise_alpha": -5}, "neftune_noise_alpha = -5.0 should be 0 (off) or more"),
    ({"kind": "qlora", "use_dora": "yes"}, "use_dora = 'yes' should be bool"),
    ({"kind": "qlora", "padding_free": 1}, "padding_free = 1 should be bool"),
    ({"kind": "qlora", "eval_rows": 2.5}, "eval_rows = 2.5: give a whole number of rows or a fraction below 1"),
    ({"kind": "qlora", "eval_metric": "rouge"}, "eval_metric = 'rouge' should be one of rouge_final, loss"),
    ({"kind": "seq2seq", "early_stopping_patience": 3}, "early_stopping_patience = 3 needs validation rows"),
    ({"kind": "seq2seq", "eval_rows": 0.1, "eval_generate_rows": 0},
     "eval_metric = 'rouge_final' needs eval_generate_rows >= 1"),
    ({"kind": "prompt", "label_smoothing": 0.1}, "unknown key 'label_smoothing'"),
    ({"kind": "seq2seq", "padding_free": True}, "unknown key 'padding_free'"),
])
def test_bad_new_values_are_one_line_config_errors(table, expected):
    assert expected in config_error(table)


def test_accepted_names_are_read_from_the_installed_transformers():
    """The lists come from transformers' own OptimizerNames and attention registry (read from its
    source without importing its training code, which takes seconds at every config load)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.training_args import OptimizerNames

    from competition.models.params import installed_names

    assert installed_names("optim") == {member.value for member in OptimizerNames}
    assert installed_names("attn_implementation") == set(ALL_ATTENTION_FUNCTIONS.valid_keys()) | {"eager"}
    assert {"paged_adamw_8bit", "adamw_torch_fused", "adafactor"} <= installed_names("optim")


def test_qlora_keys_reach_the_sft_config_and_the_lora_config(tmp_path):
    from trl import SFTConfig

    from competition.candidates.qlora import QLoRACandidate
    from competition.models.modeling import lora_config

    params = parse_config({"candidates": {"q": {
        "kind": "qlora", "optim": "paged_adamw_8bit", "max_grad_norm": 0.3, "weight_decay": 0.05,
        "neftune_noise_alpha": 5, "padding_free": True, "use_rslora": True, "use_dora": True,
        "attn_implementation": "eager"}}}).candidates["q"].params
    args = QLoRACandidate("q", params, tmp_path).training_args("cpu")
    assert isinstance(args, SFTConfig)
    assert (args.optim.value, args.max_grad_norm, args.weight_decay, args.neftune_noise_alpha, args.padding_free) == \
        ("paged_adamw_8bit", 0.3, 0.05, 5.0, True)
    lora = lora_config(params)
    assert lora.use_rslora and lora.use_dora
    from competition.models.modeling import attention_arguments

    assert attention_arguments(params) == {"attn_implementation": "eager"}

    defaults = QLoRACandidate("q", params_class("qlora")(), tmp_path).training_args("cpu")
    from transformers import TrainingArguments

    untouched = TrainingArguments(output_dir=str(tmp_path))
    assert (defaults.optim, defaults.max_grad_norm, defaults.weight_decay, defaults.neftune_noise_alpha,
            defaults.padding_free) == (untouched.optim, 1.0, 0.0, None, False)  # the defaults change nothing


def test_seq2seq_keys_reach_its_training_arguments(tmp_path):
    from transformers import Seq2SeqTrainingArguments

    from competition.candidates.seq2seq import Seq2SeqCandidate

    params = parse_config({"candidates": {"s": {
        "kind": "seq2seq", "optim": "adafactor", "max_grad_norm": 0.5, "weight_decay": 0.0,
        "label_smoothing": 0.1}}}).candidates["s"].params
    args = Seq2SeqCandidate("s", params, tmp_path).training_args("cpu")
    assert isinstance(args, Seq2SeqTrainingArguments)
    assert (args.optim.value, args.max_grad_norm, args.weight_decay, args.label_smoothing_factor) == \
        ("adafactor", 0.5, 0.0, 0.1)
    defaults = Seq2SeqCandidate("s", params_class("seq2seq")(), tmp_path).training_args("cpu")
    assert (defaults.weight_decay, defaults.label_smoothing_factor) == (0.01, 0.0)


def test_validation_keys_reach_the_training_arguments(tmp_path):
    from competition.candidates.qlora import QLoRACandidate
    from competition.candidates.seq2seq import Seq2SeqCandidate

    for candidate_class, kind in ((QLoRACandidate, "qlora"), (Seq2SeqCandidate, "seq2seq")):
        params = params_class(kind)(eval_rows=0.1, eval_steps=20, early_stopping_patience=2)
        args = candidate_class("c", params, tmp_path).training_args("cpu", validating=True)
        assert (args.eval_strategy.value, args.eval_steps, args.save_steps, args.load_best_model_at_end,
                args.metric_for_best_model, args.greater_is_better) == \
            ("steps", 20, 20, True, "eval_rouge_final", True)
        by_loss = candidate_class("c", params_class(kind)(eval_rows=5, eval_metric="loss"), tmp_path)
        args = by_loss.training_args("cpu", validating=True)
        assert (args.eval_steps, args.metric_for_best_model, args.greater_is_better) == \
            (by_loss.params.save_steps, "eval_loss", False)
        assert candidate_class("c", params, tmp_path).training_args("cpu").eval_strategy.value == "no"


def test_new_keys_at_their_defaults_keep_every_training_fingerprint(korean_rows):
    """Keys added after trainings existed are left out of the fingerprint at their default, so an
    upgrade does not retrain; set, they retrain."""
    from competition.models.params import hashed_settings

    for kind in ("qlora", "seq2seq", "prompt"):
        params = params_class(kind)()
        added = {f.name for f in dataclasses.fields(params) if f.metadata.get("added")}
        assert added and not added & set(hashed_settings(params))
        assert set(hashed_settings(params)) | added == {f.name for f in dataclasses.fields(params)}
    base = training_fingerprint(params_class("qlora")(), korean_rows)
    assert training_fingerprint(params_class("qlora")(optim="adafactor"), korean_rows) != base
    assert training_fingerprint(params_class("qlora")(eval_rows=0.1), korean_rows) != base


def test_bad_model_params_are_reported_as_config_problems():
    from competition.workspace.config import parse_config

    raw = {"candidates": {"q": {"kind": "qlora", "quantization": "3bit", "lora_rank": 8},
                          "s": {"kind": "seq2seq", "num_beams": 0}, "p": {"kind": "prompt", "num_cpus": 0}}}
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    message = str(error.value)
    assert "quantization = '3bit' should be one of 4bit, 8bit, none" in message
    assert "did you mean 'lora_r'?" in message and "num_beams = 0 should be 1 or more" in message
    assert "num_cpus = 0.0 should be more than 0" in message
