"""kind = "api": an OpenAI-compatible chat endpoint (/v1/chat/completions: vLLM, OpenAI, ...).

Requests go through `competition.chat.ChatClient`: a few threads, retries with backoff, and every
finished row appended to workdir/api_cache.jsonl at once, so a killed run resumes where it stopped.
The key is read from the environment variable named by `api_key_env` and never written anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import ConfigError
from ..prompts import DEFAULT_INSTRUCTION, DEFAULT_MARKER, DEFAULT_SYSTEM
from .base import Candidate


@dataclass
class Params:
    base_url: str = "http://127.0.0.1:8000/v1"  # endpoint root; /chat/completions is appended
    model: str = ""  # model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("" = send none)
    system_prompt: str = DEFAULT_SYSTEM  # system message ("" = none)
    instruction: str = DEFAULT_INSTRUCTION  # instruction written before the dialogue
    include_topic: bool = False  # add the row's topic to the prompt (when the data has one)
    truncation_marker: str = DEFAULT_MARKER  # replaces the cut middle of an over-long dialogue
    max_dialogue_chars: int = 12000  # longer dialogues are cut in the middle
    few_shot: int = 0  # examples per prompt, nearest training dialogues (training folds only)
    max_tokens: int = 200  # summary length cap in tokens
    temperature: float = 0.0  # 0 = as deterministic as the endpoint allows
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 5  # retries of a failed request (429, 5xx, timeouts)
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 120.0  # seconds per request


class ApiCandidate(Candidate):
    kind = "api"

    def __init__(self, name, params, workdir, seed=42):
        super().__init__(name, params, workdir, seed)
        self.report: dict = {}

    @property
    def cache_path(self):
        return self.workdir / "api_cache.jsonl"

    @property
    def fewshot_path(self):
        return self.workdir / "fewshot.jsonl"

    def fit(self, train_rows: pd.DataFrame, fold: int | None) -> None:
        from ..prompts import FewShotIndex

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.params.few_shot > 0:
            FewShotIndex.from_rows(train_rows).save(self.fewshot_path)

    def _messages(self, rows: pd.DataFrame) -> list[list[dict]]:
        from ..prompts import PromptTemplate, build_messages, prompt_inputs, truncate_middle

        template = PromptTemplate.from_params(self.params)
        dialogues, topics, examples = prompt_inputs(rows, self.params.few_shot, self.fewshot_path)
        limit = self.params.max_dialogue_chars
        cut = [truncate_middle(d, lambda text: len(text) <= limit, template.marker)[0] for d in dialogues]
        return [build_messages(template, d, t, e) for d, t, e in zip(cut, topics, examples)]

    def client(self):
        from ..chat import ChatClient, Endpoint

        params = self.params
        endpoint = Endpoint(base_url=params.base_url, model=params.model, api_key_env=params.api_key_env,
                            concurrency=params.concurrency, max_retries=params.max_retries, backoff=params.backoff,
                            timeout=params.timeout)
        return ChatClient(endpoint, self.cache_path, label=self.name)

    def predict(self, rows: pd.DataFrame) -> list[str]:
        from ..generation import clean_output, lead_fallback

        if not self.params.model:
            raise ConfigError(f"[candidates.{self.name}] needs model = \"NAME\" (the model the endpoint serves)")
        client = self.client()
        bodies = [client.body(messages, max_tokens=self.params.max_tokens, temperature=self.params.temperature)
                  for messages in self._messages(rows)]
        contents = client.complete_many(bodies)
        summaries, empty = [], 0
        for content, dialogue in zip(contents, rows["dialogue"]):
            summary = clean_output(content)
            if not summary:
                summary, empty = lead_fallback(dialogue), empty + 1
            summaries.append(summary)
        self.report = {"rows": len(rows), "from_cache": client.stats["from_cache"], "requested": client.stats["sent"],
                       "empty_to_lead": empty}
        return summaries


CANDIDATE = ApiCandidate
