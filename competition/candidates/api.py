"""kind = "api": an OpenAI-compatible chat endpoint (/v1/chat/completions: vLLM, OpenAI, ...).

Requests go through `competition.models.chat.ChatClient` (the openai SDK, `concurrency` in flight,
transient failures retried, permanent ones stop the queue), and every non-empty answer is appended
to workdir/api_cache.jsonl at once, so a killed or stopped run resumes where it left off. Rows
answered empty become the lead output, are counted, and are asked again on the next run.
The key is read from the environment variable named by `api_key_env` and never written anywhere.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..models.chat import ChatClient, Endpoint
from ..models.generation import lead_fallback
from ..models.params import Prompt, at_least
from ..models.prompts import FewShotIndex, PromptTemplate, build_messages, prompt_inputs, truncate_middle
from .base import Candidate


@dataclass
class Params(Prompt, Endpoint):
    # base_url, model, api_key_env, concurrency, max_retries, backoff, timeout: see chat.Endpoint
    # system_prompt, instruction, include_topic, truncation_marker, few_shot, ...: see parts.Prompt
    max_dialogue_chars: int = 12000  # longer dialogues are cut in the middle
    max_tokens: int = 200  # summary length cap in tokens
    temperature: float = 0.0  # 0 = as deterministic as the endpoint allows

    def check(self) -> list[str]:
        return at_least(self, ("max_dialogue_chars", "max_tokens"), 1)


class ApiCandidate(Candidate):
    kind = "api"

    @classmethod
    def retry_reason(cls, reports: dict) -> str | None:
        """Rows the endpoint answered empty were never cached: the next run asks for them again."""
        empty = sum(int((report or {}).get("empty_to_lead", 0)) for report in reports.values())
        return f"{empty} row(s) were answered empty (lead fallback): asking again" if empty else None

    @property
    def cache_path(self):
        return self.workdir / "api_cache.jsonl"

    @property
    def fewshot_path(self):
        return self.workdir / "fewshot.jsonl"

    def fit_files(self) -> dict[str, Path]:
        return {"few-shot examples": self.fewshot_path} if self.params.few_shot > 0 else {}

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.params.few_shot > 0:
            FewShotIndex.from_rows(train_rows).save(self.fewshot_path)

    def _messages(self, rows: pd.DataFrame) -> list[list[dict]]:
        template = PromptTemplate.from_params(self.params)
        dialogues, topics, examples = prompt_inputs(rows, self.params.few_shot, self.fewshot_path)
        limit = self.params.max_dialogue_chars
        cut = [truncate_middle(d, lambda text: len(text) <= limit, template.marker)[0] for d in dialogues]
        return [build_messages(template, d, t, e) for d, t, e in zip(cut, topics, examples)]

    def client(self):
        # Params is an Endpoint
        return ChatClient(self.params, self.cache_path, label=self.name, refresh=self.inputs.refresh)

    def predict(self, rows: pd.DataFrame) -> list[str]:
        if not self.params.model:
            raise ConfigError(f"[candidates.{self.name}] needs model = \"NAME\" (the model the endpoint serves)")
        client = self.client()
        bodies = [client.body(messages, max_tokens=self.params.max_tokens, temperature=self.params.temperature)
                  for messages in self._messages(rows)]
        summaries = client.complete_many(bodies)  # cleaned; "" when answered empty twice
        empty = [i for i, summary in enumerate(summaries) if not summary]
        for i in empty:
            summaries[i] = lead_fallback(rows["dialogue"].iloc[i])
        if empty:
            print(f"{self.name}: {len(empty)} of {len(rows)} rows empty: lead fallback used (not cached: "
                  f"asked again on the next run of this fold, e.g. `competition run {self.name} --force`)",
                  file=sys.stderr)
        self.report = {"rows": len(rows), "from_cache": client.report.from_cache,
                       "requested": client.report.requests - client.report.from_cache, "empty_to_lead": len(empty),
                       "endpoint": asdict(client.report)}
        return summaries


CANDIDATE = ApiCandidate
