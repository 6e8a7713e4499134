"""launcher = "accelerate": the `accelerate launch` command for one fold, and a fold trained through it."""
from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import write_workspace

from competition.errors import ConfigError
from competition.models.launch import LaunchFailed, accelerate_command, command_for, run_launcher
from competition.workspace.config import load_config


ENTRY = ["-m", "competition.run.train_fold"]


def test_single_process_command_trains_one_fold():
    command = accelerate_command("/ws/competition.toml", "solar", 2, 1, python="/venv/bin/python")
    assert command == ["/venv/bin/python", "-m", "competition.models.launch", "--quiet", "--num_processes", "1",
                       "--num_machines", "1", *ENTRY, "--config", "/ws/competition.toml", "--candidate", "solar",
                       "--fold", "2"]


def test_several_processes_without_config_file_mean_ddp():
    command = accelerate_command("c.toml", "solar", 0, 4, main_process_port=29600, data_dir="/data")
    launch = command[:command.index("-m", 2)]
    assert "--multi_gpu" in launch and launch[launch.index("--num_processes") + 1] == "4"
    assert launch[launch.index("--main_process_port") + 1] == "29600"
    assert command[-2:] == ["--data", "/data"]


def test_config_file_is_passed_through_and_refit_is_named():
    command = accelerate_command("c.toml", "solar", None, 8, accelerate_config="fsdp.yaml")
    launch = command[:command.index("competition.run.train_fold")]
    assert launch[launch.index("--config_file") + 1] == "fsdp.yaml"
    assert "--multi_gpu" not in launch  # the file chooses FSDP/DeepSpeed/DDP
    assert command[-2:] == ["--fold", "refit"]


def test_zero_processes_is_a_config_error():
    with pytest.raises(ConfigError, match="num_processes = 0"):
        accelerate_command("c.toml", "solar", 0, 0)


def test_command_from_candidate_params_resolves_the_config_file(tmp_path):
    (tmp_path / "competition.toml").write_text(
        '[candidates.big]\nkind = "qlora"\nlauncher = "accelerate"\nnum_processes = 2\n'
        'accelerate_config = "configs/fsdp.yaml"\n', encoding="utf-8")
    config = load_config(tmp_path / "competition.toml")
    with pytest.raises(ConfigError, match="fsdp.yaml.*not found"):
        command_for(config, "big", 1)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    command = command_for(config, "big", 1)
    assert command[command.index("--config_file") + 1] == str(tmp_path / "configs" / "fsdp.yaml")
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--config") + 1] == str(tmp_path / "competition.toml")
    assert command[0] == sys.executable
    port = int(command[command.index("--main_process_port") + 1])  # folds training at once on one node
    assert 1024 < port < 65536


def test_unknown_launcher_is_rejected(tmp_path, cli, korean_rows):
    test = korean_rows.tail(3).assign(fname=lambda f: "test_" + f["fname"])
    write_workspace(tmp_path, korean_rows, test, None,
                    '[cv]\nk = 2\n\n[candidates.big]\nkind = "seq2seq"\nlauncher = "torchrun"\n')
    result = cli(["run", "big"], cwd=tmp_path)
    assert result.exit_code == 2 and "launcher" in result.output


def test_a_launched_fold_reports_a_user_mistake_in_one_line(tmp_path, korean_rows, capsys):
    """Each launched rank prints a refusal (an unknown candidate here; use_lora under FSDP in
    practice) as the CLI does, exit code 2, no traceback."""
    from competition.data.loading import load_from_config
    from competition.data.folds import build_folds
    from competition.run.train_fold import main

    write_workspace(tmp_path, korean_rows, korean_rows.tail(2), None, '[cv]\nk = 2\n')
    config = load_config(tmp_path / "competition.toml")
    build_folds(config, load_from_config(config).train)
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(tmp_path / "competition.toml"), "--candidate", "nope", "--fold", "0"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and error.count("\n") == 1 and "'nope'" in error


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_user_mistake_in_a_launched_fold_is_one_line_and_exit_2(tmp_path, cli, korean_rows, tiny_causal_lm,
                                                                     capfd, processes):
    """Every training row too long for max_length: the ranks refuse, and `competition run` prints
    that line once, exit code 2, with no traceback from accelerate, torchrun or the runner."""
    test = korean_rows.tail(3).assign(fname=lambda f: "test_" + f["fname"])
    write_workspace(tmp_path, korean_rows, test, None, (
        f'[cv]\nk = 2\n\n[candidates.tiny]\nkind = "qlora"\nmodel = "{tiny_causal_lm}"\nlauncher = "accelerate"\n'
        f'num_processes = {processes}\nmax_steps = 2\nbatch_size = 2\nmax_length = 48\nmax_new_tokens = 8\n'))
    assert cli(["folds", "build"], cwd=tmp_path).exit_code == 0
    capfd.readouterr()
    result = cli(["run", "tiny", "--folds", "0"], cwd=tmp_path)
    launched = capfd.readouterr()  # what the launcher and its ranks printed
    refusal = "Error: tiny: every training row is longer than max_length=48: raise max_length in competition.toml"
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].strip() == refusal
    assert (result.output + launched.out + launched.err).count(refusal) == 1  # once, not once per rank
    assert "Traceback" not in result.output + launched.out + launched.err
    assert not (tmp_path / "runs" / "tiny" / "fold_0" / "meta.json").exists()


def test_a_crashed_launch_names_the_command(tmp_path):
    with pytest.raises(LaunchFailed, match=r"`.* -c raise SystemExit\(3\)` exited with code 3: the output"):
        run_launcher([sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path)


def test_the_launcher_does_not_inherit_a_schedulers_rank_variables(tmp_path, monkeypatch):
    """A single-process `accelerate launch` copies its whole environment into the training process:
    a WORLD_SIZE=2 left by a scheduler there would make it wait for a second rank."""
    stray = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
             "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "old-job", "TORCHELASTIC_RESTART_COUNT": "0"}
    for name, value in {**stray, "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(name, value)
    dump = tmp_path / "environment.json"
    run_launcher([sys.executable, "-c", f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"])
    environment = json.loads(dump.read_text())
    assert sorted(set(stray) & set(environment)) == []
    assert environment["HF_HOME"] == str(tmp_path / "hf")  # everything else passes through
    assert os.environ["WORLD_SIZE"] == "2"  # this process's own environment is left as it was


@pytest.mark.slow
def test_fold_trains_under_accelerate_launch(tmp_path, cli, korean_rows, tiny_causal_lm, monkeypatch):
    """The fold's adapter comes from the launched process: training in this process would fail.
    A scheduler's WORLD_SIZE=2 in the environment does not reach it (it would wait for rank 1)."""
    from competition.candidates.qlora import QLoRACandidate

    clear_rank_environment(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")

    def no_training_here(self, train_rows, fingerprint):
        raise AssertionError("the runner trained in-process instead of through accelerate launch")

    monkeypatch.setattr(QLoRACandidate, "_train", no_training_here)
    test = korean_rows.tail(3).assign(fname=lambda f: "test_" + f["fname"])
    write_workspace(tmp_path, korean_rows, test, None, (
        f'[cv]\nk = 2\n\n[candidates.tiny]\nkind = "qlora"\nmodel = "{tiny_causal_lm}"\nlauncher = "accelerate"\n'
        'num_processes = 1\nmax_steps = 2\nbatch_size = 4\ngrad_accumulation = 1\ngradient_checkpointing = false\n'
        'max_length = 512\nmax_new_tokens = 8\n'))
    assert cli(["folds", "build"], cwd=tmp_path).exit_code == 0
    result = cli(["run", "tiny", "--folds", "0", "--json"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    work = tmp_path / "runs" / "tiny" / "fold_0" / "work"
    assert json.loads((work / "train.json").read_text())["global_step"] == 2
    assert (work / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "runs" / "tiny" / "fold_0" / "oof.csv").exists()


def clear_rank_environment(monkeypatch) -> None:
    for variable in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(variable, raising=False)


class FakePartialState:
    """accelerate's PartialState as a launched rank sees it, without starting a process group."""

    made_with: list = []

    def __init__(self, cpu: bool = False):
        FakePartialState.made_with.append(cpu)
        self.is_main_process = int(os.environ["RANK"]) == 0


def test_each_launched_rank_gets_its_own_gpu_and_only_rank_0_writes(monkeypatch):
    import accelerate

    from competition.models.modeling import device_map, is_main_process

    clear_rank_environment(monkeypatch)
    monkeypatch.setattr(accelerate, "PartialState", FakePartialState)
    FakePartialState.made_with = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun (several processes under accelerate launch)
    placed, writers = [], []
    for rank in range(4):  # one machine: local rank = global rank
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("RANK", str(rank))
        placed.append(device_map("cuda")[""])
        writers.append(is_main_process("cpu"))
        assert device_map("cpu") == {"": "cpu"}
    assert placed == [0, 1, 2, 3] and writers == [True, False, False, False]
    assert FakePartialState.made_with == [True] * 4  # gloo on CPU


def test_world_size_without_a_launcher_is_a_single_process(monkeypatch):
    """A scheduler's WORLD_SIZE (even with LOCAL_RANK) must not make a plain `competition run` wait
    for ranks that never start: it loads on GPU 0, writes its files, and refuses to train. Nor
    does ACCELERATE_MIXED_PRECISION count as a launch: a single-process `accelerate launch` sets it
    in a copy of the caller's environment, stray WORLD_SIZE included."""
    import accelerate

    from competition.models.modeling import device_map, is_main_process, launched_distributed
    from competition.models.training import check_not_a_stray_rank

    def no_process_group(*args, **kwargs):
        raise AssertionError("PartialState would start a process group and wait for the other ranks")

    clear_rank_environment(monkeypatch)
    monkeypatch.setattr(accelerate, "PartialState", no_process_group)
    check_not_a_stray_rank()  # nothing set: a plain single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    for variable, value in ((None, None), ("LOCAL_RANK", "0"), ("ACCELERATE_MIXED_PRECISION", "no")):
        if variable is not None:
            monkeypatch.setenv(variable, value)
        assert not launched_distributed()
        assert is_main_process("cuda") and is_main_process("cpu")
        assert device_map("cuda") == {"": 0}
        with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 is set but .* unset WORLD_SIZE"):
            check_not_a_stray_rank()


@pytest.mark.slow
def test_two_process_ddp_fold_writes_one_adapter_and_report(tmp_path, cli, korean_rows, tiny_causal_lm):
    """`accelerate launch --num_processes 2` on CPU (gloo): both ranks train, only rank 0 writes, and
    a stale checkpoint folder is cleared once before either rank reads it."""
    from competition.models.launch import run_launcher

    write_workspace(tmp_path, korean_rows, korean_rows.tail(2), None, (
        f'[cv]\nk = 2\n\n[candidates.tiny]\nkind = "qlora"\nmodel = "{tiny_causal_lm}"\nlauncher = "accelerate"\n'
        'num_processes = 2\nmax_steps = 2\nbatch_size = 2\ngrad_accumulation = 1\ngradient_checkpointing = false\n'
        'max_length = 512\n'))
    assert cli(["folds", "build"], cwd=tmp_path).exit_code == 0
    work = tmp_path / "runs" / "tiny" / "fold_0" / "work"
    (work / "checkpoints" / "checkpoint-9").mkdir(parents=True)
    (work / "checkpoints" / "fingerprint.txt").write_text("other params")
    run_launcher(command_for(load_config(tmp_path / "competition.toml"), "tiny", 0), cwd=tmp_path)
    report = json.loads((work / "train.json").read_text())
    assert report["processes"] == 2 and report["resumed_from_step"] == 0 and report["global_step"] == 2
    assert sorted(path.name for path in (work / "adapter").iterdir() if "adapter" in path.name) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert not list((work / "adapter").glob("*.bin"))
    from competition.candidates.qlora import QLoRACandidate  # the saved adapter reloads and predicts

    config = load_config(tmp_path / "competition.toml")
    reloaded = QLoRACandidate("tiny", config.candidate("tiny").params, work)
    assert len(reloaded.predict(korean_rows.head(1))) == 1
    assert not (work / "checkpoints").exists()
