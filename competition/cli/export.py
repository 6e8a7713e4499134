"""`competition export NAME`: a trained fold or the refit model as a folder plain transformers loads."""
from __future__ import annotations

import dataclasses

import click

from ..submit.export import ExportError, default_fold, export_model
from .common import json_option, print_json, with_config


@click.command("export")
@click.argument("name")
@click.option("--fold", "fold", default=None,
              help="Fold K's model, or 'refit' for the model trained on every labelled row "
                   "(default: refit when there is one, else the lowest trained fold).")
@click.option("--merge", is_flag=True,
              help="qlora: write the base model with the adapter merged in (a 4-bit base dequantised first) "
                   "instead of the adapter.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
              help="With --merge: the merged weights' dtype. bf16 and fp16 halve the size but round every weight, "
                   "so greedy outputs can differ from `competition run`'s (float32 on CPU, bf16 on CUDA) in some "
                   "rows; fp32 matches a CPU run's up to float rounding.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Folder to write (default: exports/NAME/fold_K or exports/NAME/refit; replaced if present).")
@json_option
@with_config(tidies=False)
def export_command(config, name, fold, merge, dtype, out, as_json) -> None:
    """Export a trained qlora or seq2seq model: the adapter (or, with --merge, the merged model),
    the tokenizer, generation_config.json with the decoding `competition run` used (NAME@tuned's
    setting when current) and a README model card with the config, data hashes and CV scores.

    Example: competition export qwen3_qlora --fold 0 --merge
    """

    if fold is None:
        chosen = default_fold(config, name)
    elif fold == "refit":
        chosen = None
    elif fold.isdigit():
        chosen = int(fold)
    else:
        raise ExportError(f"--fold {fold}: give a fold number or 'refit'")
    report = export_model(config, name, chosen, out, merge=merge, dtype=dtype)
    if as_json:
        # `what` words the line below; the JSON keeps the keys scripts read
        print_json({key: value for key, value in dataclasses.asdict(report).items() if key != "what"})
        return
    click.echo(f"{name} ({report.model}): {report.what} written to {report.path} ({', '.join(report.files)})"
               + ("; generation settings from the tuned setting" if report.tuned else ""))


def register(main: click.Group) -> None:
    main.add_command(export_command)
