"""Seq2seq fine-tuning on a tiny T5 through the user's path: tags added, train, save, reload, beams."""
from __future__ import annotations

import json

import pytest

from competition.candidates.base import FoldInputs
from competition.candidates.seq2seq import Params, Seq2SeqCandidate, found_tags
from tiny_models import FIXED_T5_SUMMARY, run_through_cli


def tiny_params(model_dir, **overrides) -> Params:
    settings = dict(model=str(model_dir), max_steps=8, batch_size=4, learning_rate=3e-3, warmup=0.0,
                    logging_steps=1, save_steps=4, max_new_tokens=16, eval_batch_size=4, num_beams=2)
    settings.update(overrides)
    return Params(**settings)


def test_found_tags(korean_rows):
    assert found_tags(korean_rows) == ["#Address#", "#Person1#", "#Person2#", "#PhoneNumber#"]
    assert found_tags(korean_rows.head(0), ["생일은 #DateOfBirth#예요."]) == ["#DateOfBirth#"]


@pytest.mark.slow
def test_tags_of_every_split_are_added_and_training_is_reproducible(tiny_t5, korean_rows, tmp_path):
    """The tags of every split are added, so a tag only the test rows hold is one whole token after
    training; two trainings with one seed save the same bytes (the resized embeddings are drawn
    from the candidate's seed)."""
    params = tiny_params(tiny_t5, max_steps=2, save_steps=50)
    train = korean_rows.head(8)
    saved = []
    for folder in ("first", "second"):
        import torch

        torch.rand(len(folder))  # other draws in between must not matter
        texts = FoldInputs(vocabulary_texts=("#Person1#: 생년월일은 #DateOfBirth#입니다.",))
        candidate = Seq2SeqCandidate("t5", params, tmp_path / folder, seed=3, inputs=texts)
        candidate.fit(train, fold=0)
        saved.append((tmp_path / folder / "model" / "model.safetensors").read_bytes())
    _, tokenizer = candidate.load()
    assert len(tokenizer("#DateOfBirth#", add_special_tokens=False)["input_ids"]) == 1
    assert "#DateOfBirth#" in candidate.train_report["tags"]
    assert saved[0] == saved[1]


def _summary_loss(model, tokenizer, rows) -> float:
    import torch

    batch = tokenizer(rows["dialogue"].tolist(), text_target=rows["summary"].tolist(), padding=True,
                      return_tensors="pt")
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    model.eval()
    with torch.inference_mode():
        return float(model(**batch).loss)


@pytest.mark.parametrize("use_lora", [False, True])
@pytest.mark.slow
def test_seq2seq_trains_saves_reloads_and_predicts(tiny_t5, korean_rows, tmp_path, use_lora):
    """Trained on one fixed summary, the saved model writes exactly it for unseen dialogues (a long
    one cut to encoder_max_length too), none replaced by the lead text; a reload says the same."""
    from transformers import AutoModelForSeq2SeqLM

    # 8 steps at 1e-2 learn the text for seeds 0-3 with these schedules (a constant rate makes the
    # full fine-tune overshoot for some seeds; a decaying one leaves LoRA short for some)
    params = tiny_params(tiny_t5, use_lora=use_lora, learning_rate=1e-2, lora_dropout=0.0,
                         lr_scheduler="constant" if use_lora else "linear")
    candidate = Seq2SeqCandidate("t5", params, tmp_path / "work", seed=0)
    train = korean_rows.head(8).assign(summary=FIXED_T5_SUMMARY)
    candidate.fit(train, fold=0)
    model_dir = tmp_path / "work" / "model"
    # one safetensors model (LoRA merged in), its tokenizer; no adapter, no pickle
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer_config.json").exists()
    assert not list(model_dir.glob("adapter*")) and not list(model_dir.glob("*.bin"))
    assert candidate.train_report["global_step"] == 8

    model, tokenizer = candidate.load()
    # tags stay whole: one token each
    assert all(len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1 for tag in found_tags(train))
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    base.resize_token_embeddings(len(tokenizer))
    assert _summary_loss(model, tokenizer, train) < _summary_loss(base, tokenizer, train) - 0.1

    held_out = korean_rows.tail(4).reset_index(drop=True)
    held_out.loc[3, "dialogue"] = "#Person1#: 처음입니다.\n" + "#Person2#: 네 알겠어요.\n" * 300 + "#Person1#: 끝."
    summaries = candidate.predict(held_out)
    assert summaries == [FIXED_T5_SUMMARY] * 4
    assert candidate.report["empty_to_lead"] == 0 and candidate.report["inputs_truncated"] == 1
    fresh = Seq2SeqCandidate("t5", params, tmp_path / "work", seed=0)
    fresh.fit(train, fold=0)  # same params and rows: the saved model is kept
    assert fresh.train_report == candidate.train_report
    assert fresh.predict(held_out) == summaries and fresh.report["empty_to_lead"] == 0


@pytest.mark.slow
def test_a_cut_train_json_retrains_instead_of_crashing(tiny_t5, korean_rows, tmp_path):
    params = tiny_params(tiny_t5, max_steps=2, save_steps=10)
    Seq2SeqCandidate("t5", params, tmp_path / "work", seed=0).fit(korean_rows.head(4), fold=0)
    report = tmp_path / "work" / "train.json"
    text = report.read_text(encoding="utf-8")
    report.write_text(text[: len(text) // 2], encoding="utf-8")  # a kill in the middle of writing it
    again = Seq2SeqCandidate("t5", params, tmp_path / "work", seed=0)
    again.fit(korean_rows.head(4), fold=0)
    assert again.train_report["global_step"] == 2 and again.train_report["resumed_from_step"] == 0
    assert json.loads(report.read_text(encoding="utf-8")) == again.train_report


@pytest.mark.slow
def test_a_long_dialogue_loses_its_middle_and_the_model_sees_the_training_cut(tiny_t5, korean_rows, tmp_path,
                                                                              monkeypatch):
    params = tiny_params(tiny_t5, encoder_max_length=32, max_new_tokens=4, num_beams=1,
                         truncation_marker=" [생략] ")
    candidate = Seq2SeqCandidate("t5", params, tmp_path / "work")
    rows = korean_rows.head(2).copy()
    rows.loc[0, "dialogue"] = "#Person1#: 처음.\n" + "#Person2#: 네.\n" * 500 + "#Person1#: 끝."
    model, tokenizer = candidate.load()  # the untrained base model
    encoded = candidate._encode(tokenizer, rows["dialogue"].tolist())  # training inputs
    assert all(len(ids) == 32 for ids in encoded)
    cut = tokenizer.decode(encoded[0], skip_special_tokens=True)
    assert cut.startswith("#Person1#: 처음.") and "[생략]" in cut and cut.endswith("끝.")

    seen = []  # the input ids model.generate receives, padding dropped
    generate = model.generate

    def recording_generate(**kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen.append([token for token, keep in zip(ids, mask) if keep])
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    monkeypatch.setattr(candidate, "load", lambda: (model, tokenizer))
    summaries = candidate.predict(rows)
    assert sorted(seen) == sorted(encoded)  # predicting cuts each dialogue exactly as training does
    assert candidate.report["inputs_truncated"] == 2 and candidate.report["rows"] == 2
    assert all(isinstance(summary, str) and summary.strip() for summary in summaries)


@pytest.mark.slow
def test_tiny_seq2seq_through_competition_run(cli, korean_workspace, tiny_t5):
    runs = run_through_cli(cli, korean_workspace, "t5", (
        f'kind = "seq2seq"\nmodel = "{tiny_t5}"\nmax_steps = 8\nbatch_size = 4\nlearning_rate = 0.01\n'
        'lr_scheduler = "linear"\nwarmup = 0.0\nmax_new_tokens = 16\nnum_beams = 2\n'), fixed_summary=FIXED_T5_SUMMARY)
    assert (runs / "fold_1" / "work" / "model" / "model.safetensors").exists()
