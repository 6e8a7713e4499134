"""`competition tune NAME`."""
from __future__ import annotations

import click

from ..choices import SEARCH_METHODS
from ..stages.tune import TPE_NESTED_NOTE, TUNED_SUFFIX, TuneOptions, tune_candidate
from .common import json_option, print_json, table, with_config


@click.command("tune")
@click.argument("name")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1),
              help="Settings scored in all: the untuned one and the stored trials of a resumed search included.")
@click.option("--space", "space_path", type=click.Path(dir_okay=False), default=None,
              help="TOML/JSON file {parameter: [values]}; default: beams, length_penalty, no_repeat_ngram_size, "
                   "repetition_penalty, min_new_tokens, fixed vs dynamic length with length_scale.")
@click.option("--method", type=click.Choice(SEARCH_METHODS), default="grid", show_default=True,
              help="grid (shuffled when larger than --trials; nested score strictly nested) or optuna's TPE "
                   "(pip install 'competition[tune]'; nested score optimistic).")
@click.option("--subsample", default=200, show_default=True, type=click.IntRange(min=1),
              help="OOF rows each trial is scored on (spread over folds).")
@click.option("--confirm", default=3, show_default=True, type=click.IntRange(min=1),
              help="Best trials re-scored on all OOF rows.")
@click.option("--seed", default=42, show_default=True, help="Seed of the subsample and the search order.")
@click.option("--restart", is_flag=True,
              help="Move the stored trials aside (trials.jsonl.N) and search again, e.g. after the candidate was "
                   "re-run or with another --subsample/--seed.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None, help="Competition data folder.")
@json_option
@with_config
def tune(config, name, trials, space_path, method, subsample, confirm, seed, restart, data_dir, as_json) -> None:
    """Tune generation of a trained candidate on its OOF rows; write NAME@tuned.

    Only generation re-runs: the fold models of `competition run NAME` are loaded one at a time,
    never trained. Trials are stored in runs/NAME@tuned/trials.jsonl, so an interrupted search
    resumes (with the same candidate, data, --subsample, --seed and metric; else pass --restart).
    The chosen setting's nested score (chosen on k-1 folds, scored on all OOF rows of the held-out
    fold) shows how optimistic the search is; under --method tpe it is itself optimistic, since
    TPE's proposals were steered by every fold's rows.

    Example: competition tune qwen3 --trials 30 --subsample 300
    """
    options = TuneOptions(trials, space_path, method, subsample, confirm, seed, restart)
    result = tune_candidate(config, name, options, data_dir, progress=not as_json,
                            echo=lambda line: click.echo(line, err=True))
    nested = {str(fold): {"number": t.number, "setting": t.setting, "held_out_final": t.full_fold_finals[fold]}
              for fold, t in result.nested_choices.items()}
    summary = {"name": name, "tuned": name + TUNED_SUFFIX, "best": result.best.as_dict(),
               "untuned_oof_final": result.untuned_full_final, "tuned_oof_final": result.best.full_final,
               "nested_oof_final": result.nested_final, "nested_strict": result.nested_strict,
               "nested_note": None if result.nested_strict else TPE_NESTED_NOTE, "nested_choices": nested,
               "trials": [t.as_dict() for t in result.trials], **result.extra}
    if as_json:
        print_json(summary)
        return
    rows = [[t.number, _setting_text(t.setting), f"{t.subsample_final:.2f}",
             "" if t.full_final is None else f"{t.full_final:.2f}"]
            for t in sorted(result.trials, key=lambda t: -t.subsample_final)]
    click.echo(table(rows, ["#", "setting", f"subsample ({result.extra['subsample_rows']} rows)",
                            f"all OOF ({result.extra['oof_rows']} rows)"]))
    click.echo(f"chosen: #{result.best.number} {_setting_text(result.best.setting)}")
    click.echo(f"OOF final on all {result.extra['oof_rows']} rows: untuned {result.untuned_full_final:.2f} -> "
               f"tuned {result.best.full_final:.2f}; nested {result.nested_final:.2f} (chosen on the other folds: "
               + ", ".join(f"fold {fold} #{choice['number']}" for fold, choice in nested.items()) + ")"
               + ("" if result.nested_strict else f"; nested is {TPE_NESTED_NOTE}"))
    click.echo(f"wrote {name}{TUNED_SUFFIX}")


def _setting_text(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(setting.items()))


def register(main: click.Group) -> None:
    main.add_command(tune)
