"""Pairwise judges: for each prompt, how strongly a candidate response beats a baseline (reference) response.

Every judge returns a ``JudgeResult`` whose ``preferences`` is a float array ``(n_prompts,)`` in ``[0, 1]``
(1 = candidate wins, 0.5 = tie, 0 = baseline wins; NaN = that prompt's judgement failed, listed in ``errors``).
A failure is never fatal: metrics skip NaN prompts and report how many failed.

- ``RewardModelJudge``: a local sequence-classification reward model, preference = sigmoid(r_cand - r_base).
- ``ScoreFunctionJudge``: the same rule around any ``score_fn(prompts, responses)`` (e.g. the built-in reward head).
- ``OpenAIChatJudge``: an LLM behind an OpenAI-compatible ``/chat/completions`` endpoint, asked AlpacaEval-style
  which of two outputs is better, in both orders so that position bias cancels.

None of these is AlpacaEval's own annotator, so their win rates are not comparable with the published leaderboard;
``description`` says so for reports.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from dpo_engine.evaluation.judge_endpoints import check_endpoint_url
from dpo_engine.files import atomic_write_json, atomic_write_text, read_json, read_jsonl

ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclass
class JudgeResult:
    """What a judge returns for ``n`` prompts.

    ``preferences``: float array ``(n,)`` in ``[0, 1]``, NaN where judging failed.
    ``raw``: one dict per prompt (scores, or every request and response text exchanged).
    ``errors``: one dict per problem, ``{"index": prompt index, "error": message, ...}``.
    ``judge``: who judged, ``{"name", "description", "extra"}`` (extra: e.g. the judge's held-out agreement).
    """

    preferences: np.ndarray
    raw: list[dict]
    errors: list[dict]
    judge: dict = field(default_factory=dict)


@runtime_checkable
class PairwiseJudge(Protocol):
    """Anything that judges candidate vs baseline responses to the same prompts."""

    name: str
    description: str
    extra: dict

    def judge(self, prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]) -> JudgeResult:
        """Return preferences ``(len(prompts),)`` in ``[0, 1]`` for ``candidates[i]`` over ``baselines[i]``."""
        ...


def _check_aligned(prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]) -> None:
    if not len(prompts) == len(candidates) == len(baselines):
        raise ValueError(
            f"prompts, candidates and baselines must have the same length, "
            f"got {len(prompts)}, {len(candidates)} and {len(baselines)}"
        )


def _judge_info(judge: PairwiseJudge) -> dict:
    return {"name": judge.name, "description": judge.description, "extra": dict(judge.extra)}


def _finite_or_none(value: float) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    return float(value) if math.isfinite(value) else None


def preferences_from_scores(candidate_scores: np.ndarray, baseline_scores: np.ndarray, judge: dict) -> JudgeResult:
    """Bradley-Terry preference per prompt, ``sigmoid(candidate_score - baseline_score)`` (scores: ``(n,)`` logits).

    A prompt with a non-finite score gets preference NaN and an entry in ``errors``.
    """
    candidate_scores = np.asarray(candidate_scores, dtype=float).reshape(-1)
    baseline_scores = np.asarray(baseline_scores, dtype=float).reshape(-1)
    if candidate_scores.shape != baseline_scores.shape:
        raise ValueError(f"score shapes differ: {candidate_scores.shape} vs {baseline_scores.shape}")
    with np.errstate(invalid="ignore"):
        preferences = np.exp(-np.logaddexp(0.0, -(candidate_scores - baseline_scores)))
    raw = [
        {"index": i, "score_candidate": _finite_or_none(c), "score_baseline": _finite_or_none(b)}
        for i, (c, b) in enumerate(zip(candidate_scores, baseline_scores))
    ]
    failed = ~(np.isfinite(candidate_scores) & np.isfinite(baseline_scores))
    preferences[failed] = np.nan
    errors = [{"index": int(i), "error": "non-finite score"} for i in np.flatnonzero(failed)]
    return JudgeResult(preferences=preferences, raw=raw, errors=errors, judge=judge)


class ScoreFunctionJudge:
    """Judge with any pointwise scorer: ``score_fn(prompts, responses) -> (n,)`` logits, higher = better.

    ``extra`` travels into every ``JudgeResult.judge`` so reports can show, e.g., the scorer's held-out agreement.
    """

    def __init__(self, score_fn: ScoreFn, name: str, description: str, extra: dict | None = None):
        self.score_fn = score_fn
        self.name = name
        self.description = description
        self.extra = dict(extra or {})

    def judge(self, prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]) -> JudgeResult:
        """Preference = sigmoid(score(candidate) - score(baseline)) per prompt, shape ``(n,)``."""
        _check_aligned(prompts, candidates, baselines)
        return preferences_from_scores(
            self.score_fn(prompts, candidates), self.score_fn(prompts, baselines), _judge_info(self)
        )


class RewardModelJudge:
    """A local ``AutoModelForSequenceClassification`` reward model as judge (docs/methods.md §8, "Judges").

    Each (prompt, response) is the conversation ``[user: prompt, assistant: response]`` scored by
    ``dpo_engine.models.reward_model.RewardModelScorer`` (the scorer of reward-model external margins): the chat
    template when the tokenizer has one, else ``"prompt\n\nresponse"``; the score is the model's first logit.
    Inputs longer than ``max_length`` tokens lose their beginning (the response end, where the score is read, is
    kept). bf16 on CUDA, fp32 elsewhere.
    """

    def __init__(self, model_path: str | os.PathLike, batch_size: int = 8, device: str | None = None,
                 max_length: int = 4096):
        from dpo_engine.models.reward_model import RewardModelScorer

        self.scorer = RewardModelScorer(model_path, device=device or "auto", batch_size=batch_size,
                                        max_length=max_length)
        self.tokenizer, self.model, self.device = self.scorer.tokenizer, self.scorer.model, self.scorer.device
        self.name = f"reward-model:{Path(model_path).name}"
        self.description = (
            "Local reward model as judge (stand-in for AlpacaEval's GPT-4 annotator): preference = "
            "sigmoid(r(candidate) - r(baseline)); not comparable with published AlpacaEval numbers."
        )
        self.extra = {"model_path": str(model_path), "dtype": self.scorer.dtype}

    def render(self, prompt: str, response: str) -> str:
        """The text the reward model reads for one (prompt, response)."""
        return self.scorer.render(self._conversation(prompt, response))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Reward-model logits, float array ``(n,)``, batched by ``batch_size``."""
        return self.scorer.score([self._conversation(prompt, response) for prompt, response in zip(prompts, responses)])

    def judge(self, prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]) -> JudgeResult:
        """Preference = sigmoid(r(candidate) - r(baseline)) per prompt, shape ``(n,)``."""
        _check_aligned(prompts, candidates, baselines)
        return preferences_from_scores(
            self.score(prompts, candidates), self.score(prompts, baselines), _judge_info(self)
        )

    @staticmethod
    def _conversation(prompt: str, response: str) -> list[dict]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


JUDGE_SYSTEM_PROMPT = (
    "You are a careful evaluator of AI assistants. You compare two outputs written for the same instruction and "
    "decide which one a thoughtful person would prefer: the more helpful, accurate and relevant one. Do not let "
    "the order of the outputs or their length sway you. Answer with a single letter."
)

JUDGE_USER_TEMPLATE = """Which output follows the instruction better?

## Instruction
{instruction}

## Output (a)
{output_a}

## Output (b)
{output_b}

Reply with exactly one character: "a" if Output (a) is better, "b" if Output (b) is better."""

# "a", "B.", "(a)", "Output (b)", '"a"': one label, nothing else.
CHOICE_PATTERN = re.compile(r"^\W*(?:output\s*)?\(?\s*([ab])\s*\)?\W*$", re.IGNORECASE)

# Both orders are asked; in each, the label the candidate carries.
ORDERS = (("candidate_first", "a"), ("baseline_first", "b"))


def parse_choice(reply: str) -> str | None:
    """The chosen label, ``"a"`` or ``"b"``, from a judge's reply text; None when it names neither clearly."""
    match = CHOICE_PATTERN.match(reply.strip())
    return match.group(1).lower() if match else None


class OpenAIChatJudge:
    """An LLM behind an OpenAI-compatible ``POST {base_url}/chat/completions`` as an AlpacaEval-style pairwise judge.

    Each prompt is asked twice, candidate as Output (a) then as Output (b); each answer scores the candidate 1 or 0
    and the preference is their mean (so 0.5 when the two orders disagree: position bias cancels). Requests use the
    stdlib only, with ``Authorization: Bearer $<api_key_env>`` when that variable is set (``api_key_env=None``: no
    key). ``base_url`` must be https, or plain http to loopback (`judge_endpoints.check_endpoint_url`).
    Timeouts, connection errors, HTTP 429 and 5xx are retried up to ``max_retries`` times, sleeping
    ``backoff * 2**k`` seconds before retry ``k + 1``. A reply without a clear choice, or a request that still fails, makes that prompt NaN with an
    entry in ``errors``. ``raw`` keeps every request body and response text. Prompts run ``max_workers`` at a time.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 30,
                 max_retries: int = 3, backoff: float = 1.0, max_tokens: int = 5, max_workers: int = 4):
        self.url = check_endpoint_url(base_url, "judge").rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.max_workers = max_workers
        self.name = f"chat-judge:{model}"
        self.description = (
            f"LLM judge '{model}' via {self.url}: AlpacaEval-style pairwise prompt, both orders asked, one-letter "
            "answer; not AlpacaEval's weighted GPT-4 Turbo annotator, so not comparable with published numbers."
        )
        self.extra = {"base_url": base_url, "model": model}

    def judge(self, prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]) -> JudgeResult:
        """Preferences ``(n,)`` in ``{0, 0.5, 1}``, NaN where a reply was missing or unparsable."""
        _check_aligned(prompts, candidates, baselines)
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            outcomes = list(pool.map(self._judge_prompt, range(len(prompts)), prompts, candidates, baselines))
        preferences = np.array([preference for preference, _, _ in outcomes], dtype=float)
        raw = [record for _, record, _ in outcomes]
        errors = [error for _, _, error in outcomes if error is not None]
        return JudgeResult(preferences=preferences, raw=raw, errors=errors, judge=_judge_info(self))

    def _judge_prompt(self, index: int, prompt: str, candidate: str, baseline: str) -> tuple[float, dict, dict | None]:
        """Ask both orders for one prompt: ``(preference or NaN, raw record, error or None)``.

        After the first order fails the second is not asked (its answer could not be used).
        """
        exchanges = []
        candidate_wins = []
        for order, candidate_label in ORDERS:
            first, second = (candidate, baseline) if candidate_label == "a" else (baseline, candidate)
            exchange = self._ask(JUDGE_USER_TEMPLATE.format(instruction=prompt, output_a=first, output_b=second))
            exchange["order"] = order
            exchanges.append(exchange)
            if exchange["error"] is not None:
                error = {"index": index, "order": order, "error": exchange["error"]}
                return math.nan, {"index": index, "exchanges": exchanges}, error
            candidate_wins.append(1.0 if exchange["choice"] == candidate_label else 0.0)
        return float(np.mean(candidate_wins)), {"index": index, "exchanges": exchanges}, None

    def _ask(self, user_message: str) -> dict:
        """One question with retries. Returns ``{"request", "attempts", "reply", "choice", "error"}``; ``reply`` is
        the message text, ``choice`` "a"/"b" or None, ``error`` None on success."""
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": user_message},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        exchange = {"request": body, "attempts": [], "reply": None, "choice": None, "error": None}
        response_text = self._post_with_retries(body, exchange["attempts"])
        if response_text is None:
            last = exchange["attempts"][-1]["error"]
            exchange["error"] = f"request failed after {len(exchange['attempts'])} attempt(s): {last}"
            return exchange
        try:
            exchange["reply"] = json.loads(response_text)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            exchange["error"] = f"malformed response (no choices[0].message.content): {response_text[:200]!r}"
            return exchange
        exchange["choice"] = parse_choice(exchange["reply"])
        if exchange["choice"] is None:
            exchange["error"] = f"malformed reply (no clear 'a' or 'b'): {exchange['reply'][:200]!r}"
        return exchange

    def _post_with_retries(self, body: dict, attempts: list[dict]) -> str | None:
        """POST ``body``; append one record per attempt to ``attempts``; the response text, or None on failure."""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response_text = self._post(body)
            except urllib.error.HTTPError as exc:
                attempts.append({"error": f"HTTP {exc.code}", "response": exc.read().decode("utf-8", "replace")})
                if exc.code != 429 and exc.code < 500:
                    return None  # a client error: the same request would fail again
                continue
            except (OSError, http.client.HTTPException) as exc:  # timeouts, refused/reset connections
                attempts.append({"error": f"{type(exc).__name__}: {exc}"})
                continue
            attempts.append({"response": response_text})
            return response_text
        return None

    def _post(self, body: dict) -> str:
        """One HTTP POST of ``body`` as JSON; the response body text. Raises on HTTP errors and timeouts."""
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode("utf-8")


def save_judgements(result: JudgeResult, path: str | os.PathLike) -> None:
    """Write ``result`` as JSONL, one line per prompt ``{"index", "preference" (None when failed), "raw", "errors"}``,
    plus ``<path>.meta.json`` with the judge and counts."""
    path = Path(path)
    errors_by_index: dict[int, list[dict]] = {}
    for error in result.errors:
        errors_by_index.setdefault(error["index"], []).append(error)
    lines = [
        json.dumps({
            "index": i,
            "preference": _finite_or_none(preference),
            "raw": raw,
            "errors": errors_by_index.get(i, []),
        })
        for i, (preference, raw) in enumerate(zip(result.preferences, result.raw))
    ]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    n_failed = int(np.isnan(result.preferences).sum())
    atomic_write_json(Path(f"{path}.meta.json"), {
        "judge": result.judge, "n_prompts": len(lines), "n_failed": n_failed, "n_errors": len(result.errors),
    })


def load_judgements(path: str | os.PathLike) -> JudgeResult:
    """Read back what ``save_judgements`` wrote."""
    records = sorted(read_jsonl(path), key=lambda record: record["index"])
    meta = read_json(f"{path}.meta.json", default={})
    preferences = np.array(
        [math.nan if record["preference"] is None else record["preference"] for record in records], dtype=float
    )
    return JudgeResult(
        preferences=preferences,
        raw=[record["raw"] for record in records],
        errors=[error for record in records for error in record["errors"]],
        judge=meta.get("judge", {}),
    )
