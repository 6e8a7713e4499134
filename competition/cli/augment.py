"""`competition augment METHOD`."""
from __future__ import annotations

from pathlib import Path

import click

from ..choices import AUGMENTATIONS
from ..data.loading import load_from_config
from ..errors import CompetitionError
from ..models.chat import Endpoint
from ..stages import augment as aug
from ..text.metric import get_scorer
from .common import json_option, print_json, with_config

_ENDPOINT = Endpoint()  # the defaults the api kind has too


@click.command("augment")
@click.argument("method", type=click.Choice(AUGMENTATIONS))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Output CSV (default: data/augmented/METHOD.csv); its stem names the new rows (SOURCE__STEM).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None, help="Competition data folder.")
@click.option("--permutation", default="2,1", show_default=True,
              help="speaker-swap: new number of speaker 1,2,3...; 2,1 swaps #Person1# and #Person2#.")
@click.option("--local-model", default=None, help="paraphrase/synthetic: a local causal LM folder (or hub id).")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Local generator: most tokens per output.")
@click.option("--base-url", default=None, help="paraphrase/synthetic: OpenAI-compatible endpoint root, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", default="", help="Model name the endpoint serves.")
@click.option("--api-key-env", default=_ENDPOINT.api_key_env, show_default=True,
              help="Env var with the key (\"\" or unset: send none, for a local server).")
@click.option("--concurrency", default=_ENDPOINT.concurrency, show_default=True, help="Requests in flight at once.")
@click.option("--timeout", default=_ENDPOINT.timeout, show_default=True, help="Seconds per request.")
@click.option("--max-retries", default=_ENDPOINT.max_retries, show_default=True,
              help="Retries of a transient failure (429, 5xx, timeouts, resets).")
@click.option("--backoff", default=_ENDPOINT.backoff, show_default=True,
              help="Seconds before the first retry, doubling each time (a Retry-After wins).")
@click.option("--refresh", is_flag=True, help="Re-send prompts whose answers are cached.")
@click.option("--limit", type=int, default=None, help="Augment only the first N training rows.")
@click.option("--topics", default=None, help="synthetic: comma-separated topics (default: the rarest).")
@click.option("--rarest", default=10, show_default=True, help="synthetic: how many of the rarest topics.")
@click.option("--per-topic", default=3, show_default=True, help="synthetic: dialogues per topic.")
@click.option("--min-ratio", default=0.02, show_default=True, help="Drop rows with summary/dialogue chars below this.")
@click.option("--max-ratio", default=1.0, show_default=True, help="Drop rows with summary/dialogue chars above this.")
@click.option("--rouge-min", default=0.2, show_default=True, help="paraphrase: drop rows further than this from the source.")
@click.option("--rouge-max", default=0.95, show_default=True, help="paraphrase: drop rows nearer than this (no real rewrite).")
@json_option
@with_config
def augment(config, method, out_path, data_dir, permutation, local_model, max_new_tokens, base_url, model, api_key_env,
            concurrency, timeout, max_retries, backoff, refresh, limit, topics, rarest, per_topic, min_ratio, max_ratio,
            rouge_min, rouge_max, as_json) -> None:
    """Make augmented training rows that remember their source row (fold-safe).

    A candidate uses them with `augmentations = ["data/augmented/speaker-swap.csv"]`; a fold then
    trains on an augmented row only when its source row is in that fold's training set.

    An endpoint's answers are cached beside the output (only non-empty ones), so a killed or
    stopped run resumes; a refused request (bad key, unknown model) stops the run at once.

    Examples: competition augment speaker-swap;
    competition augment paraphrase --base-url http://127.0.0.1:8000/v1 --model qwen --limit 2500
    """
    data = load_from_config(config, data_dir)
    rows = data.train.head(limit) if limit else data.train
    target = Path(out_path) if out_path else config.resolve(config.data.dir) / "augmented" / f"{method}.csv"
    complete = None
    if method != "speaker-swap":
        if local_model:
            complete = aug.local_completer(local_model, max_new_tokens, cache_path=target.with_suffix(".cache.jsonl"))
        elif base_url:
            try:
                endpoint = Endpoint(base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                                    max_retries=max_retries, backoff=backoff, timeout=timeout)
            except ValueError as error:
                raise CompetitionError(f"augment: {error}") from None
            complete = aug.api_completer(endpoint, target.with_suffix(".cache.jsonl"), refresh=refresh)
        else:
            raise CompetitionError(f"{method} needs a generator: --local-model PATH or --base-url URL --model NAME")
    rouge_bounds, scorer = None, None
    if method == "speaker-swap":
        made, report = aug.speaker_swap(rows, permutation, name=target.stem)
    elif method == "paraphrase":
        made, report = aug.paraphrase(rows, complete, name=target.stem)
        rouge_bounds = (rouge_min, rouge_max)
        scorer = get_scorer(config.metric.tokenizer, config.metric.convention, config.metric.multi_ref)
    else:
        chosen = [t.strip() for t in topics.split(",")] if topics else aug.rarest_topics(data.train, rarest)
        if not chosen:
            raise CompetitionError("synthetic: the training data has no topics; pass --topics 'a,b'")
        made, report = aug.synthetic(chosen, per_topic, complete, name=target.stem)
    kept = aug.quality_filter(made, data.train, report, min_ratio, max_ratio, rouge_bounds, scorer)
    aug.write_augmented(kept, target)
    summary = {**report.as_dict(), "out": str(target)}
    if as_json:
        print_json(summary)
        return
    click.echo(f"{method}: {report.source_rows} source rows, {report.made} made, {report.kept} kept -> {target}")
    for reason, count in summary["dropped"].items():
        click.echo(f"  dropped {count}: {reason}")


def register(main: click.Group) -> None:
    main.add_command(augment)
