"""Judges by name: the built-in offline judge, and `make_judge`, which turns a ``--judge`` spec into a judge.

The CLI, the dashboard (through the CLI's eval job) and the study all choose judges here. An OpenAI-compatible
endpoint is named from the allow-list (``openai:NAME``, see `dpo_engine.evaluation.judge_endpoints`); a spec
that spells out a URL (``openai:BASE_URL:MODEL``) still works, but gets the key only when that URL is
allow-listed, and plain http only on loopback.
"""

from __future__ import annotations

import re
from pathlib import Path

from dpo_engine.errors import ConfigError, ModelError
from dpo_engine.evaluation.judge_endpoints import allowed_endpoints, check_endpoint_url, key_env_for
from dpo_engine.paths import ASSETS_DIR

JUDGE_ARTIFACT = ASSETS_DIR / "judge" / "embedding_judge_uf.npz"
JUDGE_HELP = (
    "who judges each answer against the baseline's: 'builtin' (offline stand-in: embedding reward head trained on "
    "GPT-4-scored UltraFeedback pairs), 'reward-model:PATH' (a local AutoModelForSequenceClassification directory), "
    "'openai:NAME' (an endpoint of the allow-list in $MARGIN_LAB_JUDGE_ENDPOINTS, with its key from the "
    "environment) or 'openai:BASE_URL:MODEL' (an OpenAI-compatible /chat/completions endpoint, e.g. "
    "openai:http://localhost:8000/v1:my-model; https, or http on loopback; a key is sent only to allow-listed URLs)"
)
# openai:<scheme>://<host>[:<port>][/<path without ':'>]:<model, which may hold ':' and '/'>
OPENAI_SPEC = re.compile(r"^openai:(https?://[^/:]+(?::\d+)?(?:/[^:]*)?):(.+)$")


def offline_judge(path: str | Path = JUDGE_ARTIFACT):
    """The built-in offline judge: the shipped embedding reward head, preference = sigmoid(r(cand) - r(base)).

    ``extra["heldout_agreement"]`` is the fraction of held-out GPT-4-labelled UltraFeedback pairs the head orders
    like GPT-4 did (from the artifact's metadata).
    """
    from dpo_engine.evaluation.judges import ScoreFunctionJudge
    from dpo_engine.models.reward_head import STAND_IN_NOTE, EmbeddingRewardModel

    path = Path(path)
    if not path.exists():
        raise ModelError(f"the offline judge artifact {path} is missing; pass another judge (reward model or API)")
    head = EmbeddingRewardModel.load(path)
    metadata = head.metadata
    return ScoreFunctionJudge(
        head.score,
        name="builtin-embedding-judge",
        description=(
            f"{head.description}. Offline stand-in for AlpacaEval's GPT-4 Turbo annotator ({STAND_IN_NOTE}); "
            "preference = sigmoid(r(candidate) - r(baseline)); not comparable with published AlpacaEval numbers."
        ),
        extra={
            "heldout_agreement": metadata.get("heldout_accuracy"),
            "heldout_pairs": metadata.get("heldout_pairs"),
            "training_data": metadata.get("training_data"),
            "n_training_pairs": metadata.get("n_pairs"),
            "artifact": str(path),
        },
    )


def judge_specs() -> dict[str, str]:
    """The judges a form may offer: ``{spec: description}``; the built-in one, then each allow-listed endpoint."""
    specs = {"builtin": "built-in offline judge (embedding reward head trained on GPT-4-scored UltraFeedback)"}
    for name, endpoint in allowed_endpoints().items():
        specs[f"openai:{name}"] = f"{name}: {endpoint.model} at {endpoint.base_url}"
    return specs


def make_judge(spec: str):
    """A judge from its command-line spec (see ``JUDGE_HELP``); ``ConfigError('judge', ...)`` for a bad one."""
    from dpo_engine.evaluation.judges import OpenAIChatJudge, RewardModelJudge

    if spec == "builtin":
        return offline_judge()
    if spec.startswith("reward-model:") and len(spec) > len("reward-model:"):
        return RewardModelJudge(spec[len("reward-model:"):])
    match = OPENAI_SPEC.match(spec)
    if match:
        base_url = check_endpoint_url(match.group(1), "judge")
        return OpenAIChatJudge(base_url=base_url, model=match.group(2), api_key_env=key_env_for(base_url))
    if spec.startswith("openai:"):
        name = spec[len("openai:"):]
        endpoints = allowed_endpoints()
        if name not in endpoints:
            listed = ", ".join(endpoints) or "none configured"
            raise ConfigError("judge", f"'{name}' is not an allow-listed judge endpoint ({listed}); see JUDGE_HELP")
        endpoint = endpoints[name]
        return OpenAIChatJudge(base_url=endpoint.base_url, model=endpoint.model, api_key_env=endpoint.api_key_env)
    raise ConfigError("judge", f"'{spec}' is not builtin, reward-model:PATH, openai:NAME or openai:BASE_URL:MODEL")
