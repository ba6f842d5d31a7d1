"""Pointwise scorers of sampled answers: ``score(prompts, responses) -> (n,)`` float64, higher = better.

- ``builtin``: the shipped stand-in reward head (`dpo_engine.models.reward_head`, the artifact the offline judge
  uses), in logit units;
- ``reward-model``: a local sequence-classification reward model's first logit (`RewardModelJudge.score`);
- ``judge-api``: an OpenAI-compatible chat model asked for a 1-10 rating (AlpacaEval's judges are pairwise; the engine
  has no pointwise API judge, so it lives here). A reply without a number scores NaN; NaN answers never win a pair.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dpo_engine.rounds.config import RoundsConfig

ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
RATING_SYSTEM_PROMPT = (
    "You are a careful evaluator of answers to user instructions. Rate how helpful, correct and well written the "
    "answer is on a scale from 1 (useless) to 10 (excellent). Reply with the number only."
)
RATING_USER_TEMPLATE = "Instruction:\n{instruction}\n\nAnswer:\n{answer}\n\nRating (1-10):"
_NUMBER = re.compile(r"(?<![\d.])(10|[1-9])(?:\.\d+)?(?![\d])")


def make_scorer(config: RoundsConfig) -> tuple[ScoreFn, str]:
    """The configured scorer and a one-line description of it."""
    if config.scorer == "reward-model":
        from dpo_engine.evaluation.judges import RewardModelJudge

        judge = RewardModelJudge(config.reward_model, device=None if config.device == "auto" else config.device)
        return judge.score, f"reward model {config.reward_model} (first logit)"
    if config.scorer == "judge-api":
        rater = ChatRater(config.judge_base_url, config.judge_model, config.judge_api_key_env)
        return rater.score, f"chat model {config.judge_model} at {config.judge_base_url}, 1-10 rating"
    from dpo_engine.evaluation.judge_factory import JUDGE_ARTIFACT
    from dpo_engine.models.reward_head import EmbeddingRewardModel

    head = EmbeddingRewardModel.load(JUDGE_ARTIFACT)
    return head.score, head.description


def parse_rating(reply: str) -> float:
    """The first rating 1-10 in ``reply`` as a float, NaN when there is none."""
    match = _NUMBER.search(reply or "")
    return float(match.group(1)) if match else float("nan")


class ChatRater:
    """Pointwise ratings from ``POST {base_url}/chat/completions`` (temperature 0), one request per answer.

    Timeouts, connection errors, HTTP 429 and 5xx are retried ``max_retries`` times with ``backoff * 2**k`` s sleeps.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30,
                 max_retries: int = 3, backoff: float = 1.0, max_workers: int = 4):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout
        self.max_retries, self.backoff, self.max_workers = max_retries, backoff, max_workers

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Ratings ``(n,)`` in [1, 10], NaN where the request failed or the reply had no number."""
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return np.array(list(pool.map(self._rate, prompts, responses)), dtype=np.float64)

    def _rate(self, instruction: str, answer: str) -> float:
        body = {
            "model": self.model, "temperature": 0, "max_tokens": 4,
            "messages": [{"role": "system", "content": RATING_SYSTEM_PROMPT},
                         {"role": "user", "content": RATING_USER_TEMPLATE.format(instruction=instruction, answer=answer)}],
        }
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = json.loads(self._post(body))["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500:
                    return float("nan")  # a client error: the same request would fail again
                continue
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                continue
            return parse_rating(reply)
        return float("nan")

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode("utf-8")
