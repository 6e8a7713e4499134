"""Validation inside a fold's training: rows from the training folds only (clusters whole, augmented
rows with their source), loss and ROUGE every eval_steps, early stopping, the best checkpoint kept,
the curve in train.json and `competition cv --curves`."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from competition.candidates.base import FoldInputs
from competition.errors import ConfigError
from competition.models.validation import RowGroups, curve, validation_split


def rows(count: int) -> pd.DataFrame:
    return pd.DataFrame({"fname": [f"r{i}" for i in range(count)], "dialogue": [f"대화 {i}" for i in range(count)],
                         "summary": [f"요약 {i}" for i in range(count)], "topic": ""})


def test_count_or_fraction_seeded_and_disjoint():
    train = rows(40)
    fit, held = validation_split(train, 5, seed=1)
    assert len(held) == 5 and len(fit) == 35 and set(fit["fname"]).isdisjoint(held["fname"])
    assert set(fit["fname"]) | set(held["fname"]) == set(train["fname"])
    assert list(validation_split(train, 5, seed=1)[1]["fname"]) == list(held["fname"])  # seeded
    assert list(validation_split(train, 5, seed=2)[1]["fname"]) != list(held["fname"])
    assert len(validation_split(train, 0.25, seed=1)[1]) == 10
    fit, held = validation_split(train, 0, seed=1)
    assert fit is train and held.empty


def test_near_duplicate_clusters_stay_on_one_side_and_augmented_rows_follow_their_source():
    umbrella = "#Person1#: 지하철에서 파란 우산을 잃어버렸어요 분실물 센터가 어디예요 #Person2#: 이층으로 가세요"
    train = rows(12)
    # r0..r3: one dialogue with a word changed (one cluster); r4/r5: another pair; r6..r11 unrelated
    train.loc[0:3, "dialogue"] = [umbrella + ending for ending in (" 고마워요", " 감사해요", " 네", " 알겠어요")]
    train.loc[4:5, "dialogue"] = ["#Person1#: 내일 회의는 세 시에 본관 회의실에서 해요 자료를 준비해 주세요 " + ending
                                  for ending in ("네", "알겠어요")]
    groups = RowGroups(train[["fname", "dialogue"]], threshold=0.5, tokenizer="whitespace",
                       source_of={"r0__para": "r0", "syn_1": ""})
    assert len({groups.key(f"r{i}") for i in range(4)}) == 1 and groups.key("r4") == groups.key("r5")
    assert len({groups.key(f"r{i}") for i in range(12)}) == 8
    augmented = pd.DataFrame({"fname": ["r0__para", "syn_1"], "dialogue": ["바꾼 대화", "새 대화"],
                              "summary": ["바꾼 요약", "새 요약"], "topic": ""})
    every = pd.concat([train, augmented], ignore_index=True)
    picked_the_big_cluster = 0
    for seed in range(30):
        fit, held = validation_split(every, 3, seed, groups)
        chosen = set(held["fname"])
        for cluster in ({"r0", "r1", "r2", "r3"}, {"r4", "r5"}):
            assert cluster <= chosen or cluster.isdisjoint(chosen), (seed, chosen)
        assert len(held) >= 3 and not chosen & {"r0__para", "syn_1"}  # augmented rows never validate
        assert ("r0__para" in set(fit["fname"])) == ("r0" not in chosen)  # out of training with its source
        assert "syn_1" in set(fit["fname"]) and set(fit["fname"]).isdisjoint(chosen)
        picked_the_big_cluster += "r0" in chosen
    assert 0 < picked_the_big_cluster < 30  # both sides of the r0 case were exercised


def test_asking_for_every_row_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"eval_rows = 12 asks for 12 validation rows but the fold trains on 12"):
        validation_split(rows(12), 12, seed=0)


def test_curve_merges_training_and_validation_lines_by_step():
    history = [{"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2}, {"eval_loss": 2.7, "eval_rouge_final": 20.0,
                                                                    "step": 2}, {"train_runtime": 1.0, "step": 2}]
    assert curve(history) == [{"step": 1, "loss": 3.0},
                              {"step": 2, "loss": 2.5, "eval_loss": 2.7, "eval_rouge_final": 20.0}]


def tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(first[key].equal(second[key]) for key in first)


class KeepCheckpoints:
    """A TrainerCallback copying each checkpoint's weights aside (the run deletes checkpoints/)."""

    def __new__(cls, folder, weights: str):
        from transformers import TrainerCallback

        class Keep(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                source = f"{args.output_dir}/checkpoint-{state.global_step}/{weights}"
                shutil.copy(source, folder / f"{state.global_step}.safetensors")

        folder.mkdir(parents=True, exist_ok=True)
        return Keep()


class Plateau:
    """A TrainerCallback planting a plateau: from step `after` on, the trainable weights are the
    step-`after` ones plus fresh noise, so validation never improves again while the weights
    (and checkpoints) keep changing."""

    def __new__(cls, after: int):
        import torch
        from transformers import TrainerCallback

        snapshot = {}

        class Plant(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
                if state.global_step == after:
                    snapshot.update({name: p.detach().clone() for name, p in trainable.items()})
                elif state.global_step > after:
                    generator = torch.Generator().manual_seed(state.global_step)
                    with torch.no_grad():
                        for name, p in trainable.items():
                            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                            p.copy_(snapshot[name] + 0.5 * noise.to(p.dtype))

        return Plant()


@pytest.mark.slow
def test_early_stopping_stops_at_a_planted_plateau_and_keeps_the_best_checkpoint(tiny_causal_lm, korean_rows,
                                                                                 tmp_path):
    from competition.candidates.qlora import Params, QLoRACandidate

    params = Params(model=str(tiny_causal_lm), max_steps=20, batch_size=3, grad_accumulation=1, learning_rate=1e-2,
                    warmup=0.0, logging_steps=1, max_length=512, max_new_tokens=8, gradient_checkpointing=False,
                    eval_rows=3, eval_steps=1, eval_metric="loss", early_stopping_patience=2)
    callbacks = (Plateau(after=3), KeepCheckpoints(tmp_path / "kept", "adapter_model.safetensors"))
    candidate = QLoRACandidate("tiny", params, tmp_path / "work", seed=0,
                               inputs=FoldInputs(trainer_callbacks=callbacks))
    candidate.fit(korean_rows, fold=0)

    report = json.loads((tmp_path / "work" / "train.json").read_text())
    losses = {point["step"]: point["eval_loss"] for point in report["curve"] if "eval_loss" in point}
    best = min(losses, key=lambda step: (losses[step], step))
    assert report["chosen_step"] == best <= 3 and report["best_metric"] == losses[best]
    assert all(losses[step] > losses[best] for step in losses if step > 3)  # the planted plateau
    assert report["global_step"] == best + 2 < 20 and report["stopped_early"]  # patience 2, one step apart
    saved = tensors(tmp_path / "work" / "adapter" / "adapter_model.safetensors")
    assert same(saved, tensors(tmp_path / "kept" / f"{best}.safetensors"))
    assert not same(saved, tensors(tmp_path / "kept" / f"{report['global_step']}.safetensors"))
    assert len(report["eval_fnames"]) == 3 and report["train_rows"] == 9
    assert set(report["eval_fnames"]) <= set(korean_rows["fname"])


@pytest.mark.slow
def test_rouge_on_greedy_summaries_picks_the_checkpoint_that_predicts(tiny_causal_lm, korean_rows, tmp_path, capsys):
    """Trained on one fixed summary, the tiny model learns to write it: validation ROUGE rises to
    100, the chosen step is the first at the best ROUGE, and the saved adapter predicts that text.
    Each validation's generation says where it is (the training's bar stands still meanwhile)."""
    from competition.candidates.qlora import Params, QLoRACandidate
    from competition.text.metric import get_scorer

    target = "#Person1#은 우산을 찾습니다."
    rows = korean_rows.assign(summary=target)
    params = Params(model=str(tiny_causal_lm), quantization="none", max_steps=6, batch_size=4, grad_accumulation=1,
                    learning_rate=1e-2, lr_scheduler="constant", warmup=0.0, logging_steps=1, max_length=512,
                    max_new_tokens=16, gradient_checkpointing=False, eval_rows=3, eval_steps=2)
    candidate = QLoRACandidate("tiny", params, tmp_path / "work", seed=0)
    candidate.fit(rows, fold=0)
    report = candidate.train_report
    rouge = {point["step"]: point["eval_rouge_final"] for point in report["curve"] if "eval_rouge_final" in point}
    assert sorted(rouge) == [2, 4, 6] and report["eval_metric"] == "rouge_final"
    said = capsys.readouterr().err
    assert all(f"validation at step {step} generate: 3 rows in" in said for step in (2, 4, 6))
    best = max(rouge.values())
    assert min(rouge.values()) < 50 and report["best_metric"] == best == pytest.approx(100, abs=1e-3)
    assert report["chosen_step"] == min(step for step, value in rouge.items() if value == best)
    held = rows[rows["fname"].isin(report["eval_fnames"])]
    summaries = candidate.predict(held)
    assert summaries == [target] * 3 and candidate.report["empty_to_lead"] == 0
    scorer = get_scorer("kiwi", "official", "mean")
    assert scorer.score(summaries, held["summary"].tolist()).final == report["best_metric"]


@pytest.mark.slow
def test_seq2seq_validates_keeps_its_best_checkpoint_and_uses_its_optimizer(tiny_t5, korean_rows, tmp_path):
    from transformers import TrainerCallback
    from transformers.optimization import Adafactor

    from competition.candidates.seq2seq import Params, Seq2SeqCandidate

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.update(optimizer=getattr(optimizer, "optimizer", optimizer), smoothing=args.label_smoothing_factor)

    params = Params(model=str(tiny_t5), max_steps=8, batch_size=4, learning_rate=3e-3, warmup=0.0, logging_steps=1,
                    max_new_tokens=8, eval_batch_size=4, num_beams=2, eval_rows=3, eval_steps=2,
                    eval_metric="loss", optim="adafactor", label_smoothing=0.1)
    callbacks = (Spy(), Plateau(after=4), KeepCheckpoints(tmp_path / "kept", "model.safetensors"))
    candidate = Seq2SeqCandidate("t5", params, tmp_path / "work", seed=0,
                                 inputs=FoldInputs(trainer_callbacks=callbacks))
    candidate.fit(korean_rows, fold=0)
    assert isinstance(seen["optimizer"], Adafactor) and seen["smoothing"] == 0.1
    report = candidate.train_report
    losses = {point["step"]: point["eval_loss"] for point in report["curve"] if "eval_loss" in point}
    assert sorted(losses) == [2, 4, 6, 8]
    best = min(losses, key=lambda step: (losses[step], step))
    assert report["chosen_step"] == best <= 4
    saved = tensors(tmp_path / "work" / "model" / "model.safetensors")
    assert same(saved, tensors(tmp_path / "kept" / f"{best}.safetensors"))
    assert not same(saved, tensors(tmp_path / "kept" / "8.safetensors"))


@pytest.mark.slow
def test_through_run_validation_rows_come_from_the_training_folds_and_cv_draws_the_curves(
        cli, tmp_path, korean_rows, tiny_causal_lm):
    """Near-duplicate twins planted in the data: the folds keep each pair together, and so does each
    fold's validation split; no validation row is held out by its fold or a near-duplicate of one.
    `competition cv --curves NAME --plot` then tabulates and draws both folds."""
    from conftest import write_workspace

    from competition.workspace.config import load_config
    from competition.data.folds import grouping_threshold, load_folds
    from competition.data.shift import near_duplicate_clusters

    twins = korean_rows.head(6).assign(fname=lambda f: f["fname"] + "_twin",
                                       dialogue=lambda f: f["dialogue"] + "\n#Person1#: 네, 고마워요.")
    train = pd.concat([korean_rows, twins], ignore_index=True)
    test = korean_rows.tail(2).assign(fname=lambda f: "test_" + f["fname"])
    write_workspace(tmp_path, train, test, config=(
        f'[cv]\nk = 2\n\n[candidates.tiny]\nkind = "qlora"\nmodel = "{tiny_causal_lm}"\nmax_steps = 2\n'
        'batch_size = 4\ngrad_accumulation = 1\ngradient_checkpointing = false\nmax_length = 512\n'
        'max_new_tokens = 4\nlogging_steps = 1\neval_rows = 0.4\neval_steps = 1\neval_generate_rows = 2\n'))
    assert cli(["folds", "build"], cwd=tmp_path).exit_code == 0
    result = cli(["run", "tiny"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    # 4-bit on CPU: validation's summaries come from the quantized layers, not prediction's float copy
    assert "tiny: validation generates 2 greedy summaries every 1 steps through the 4bit layers" in result.output
    assert "tiny fold 1 validation at step 2 generate: 2 rows in" in result.output

    config = load_config(tmp_path / "competition.toml")
    fold_of = load_folds(config).set_index("fname")["fold"]
    labels = near_duplicate_clusters(train["dialogue"].tolist(), config.metric.tokenizer,
                                    grouping_threshold(config))  # the threshold folds build chose
    cluster_of = dict(zip(train["fname"], labels))
    assert all(cluster_of[f] == cluster_of[f"{f}_twin"] for f in korean_rows.head(6)["fname"])  # planted
    for fold in (0, 1):
        report = json.loads((tmp_path / "runs" / "tiny" / f"fold_{fold}" / "work" / "train.json").read_text())
        chosen = set(report["eval_fnames"])
        assert chosen and all(fold_of[f] != fold for f in chosen)  # from the training folds only
        held_clusters = {cluster_of[f] for f in fold_of.index if fold_of[f] == fold}
        assert not {cluster_of[f] for f in chosen} & held_clusters  # no near-duplicate of a held-out row
        training = [f for f in fold_of.index if fold_of[f] != fold]
        for cluster in {cluster_of[f] for f in training}:
            members = {f for f in training if cluster_of[f] == cluster}
            assert members <= chosen or members.isdisjoint(chosen)  # twins on one side
        assert report["train_rows"] == len(training) - len(chosen)
        assert [p["step"] for p in report["curve"] if "eval_rouge_final" in p] == [1, 2]

    plot = tmp_path / "curves.png"
    result = cli(["cv", "--curves", "tiny", "--plot", plot], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["model", "steps", "chosen", "step"]
    assert [line.split()[:2] for line in lines[2:4]] == [["fold", "0"], ["fold", "1"]]
    curves = json.loads(cli(["cv", "--curves", "tiny", "--json"], cwd=tmp_path).stdout)
    assert set(curves) == {"fold 0", "fold 1"} and curves["fold 0"]["eval_metric"] == "rouge_final"


def test_curves_of_a_source_that_never_trained_is_one_line(cli, korean_workspace):
    result = cli(["cv", "--curves", "lead"], cwd=korean_workspace)
    assert result.exit_code == 2 and "no training curve under" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = cli(["cv", "--plot", "x.png"], cwd=korean_workspace)
    assert result.exit_code == 2 and "--curves NAME" in result.output


def test_curves_of_a_kind_that_never_trains_say_so(cli, korean_workspace):
    """`cv --curves` of a kind or ensemble that trains no model says so in one line, and sends
    nobody to `competition run`."""
    toml = korean_workspace / "competition.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + '\n[candidates.lead]\nkind = "lead"\n\n[ensembles.mix]\n'
                    'members = ["lead"]\n', encoding="utf-8")
    for name, what in (("lead", "kind lead"), ("mix", "an ensemble")):
        result = cli(["cv", "--curves", name], cwd=korean_workspace)
        assert result.exit_code == 2 and f"'{name}' ({what}) trains no model, so it has no training curves" in result.output
        assert "competition run" not in result.output and len(result.output.strip().splitlines()) == 1
