"""Judges: a tiny local reward model, a score-function judge, and an OpenAI-compatible judge against a fake server."""

import json
import math
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from dpo_engine.evaluation.judges import (
    JudgeResult,
    OpenAIChatJudge,
    PairwiseJudge,
    RewardModelJudge,
    ScoreFunctionJudge,
    load_judgements,
    parse_choice,
    save_judgements,
)
from dpo_engine.evaluation.metrics import win_rate

PROMPTS = ["Name a colour.", "What is 2 + 2? Explain briefly.", "Say hi"]
CANDIDATES = ["Blue.", "It is 4, because two plus two makes four.", "Hello there, friend!"]
BASELINES = ["Red is a colour that many people like.", "4", "hi"]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------- reward model judge


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A random 1-layer LlamaForSequenceClassification (num_labels=1) with a byte-level tokenizer, saved to disk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<pad>"], vocab["<eos>"] = len(vocab), len(vocab) + 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")

    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _manual_scores(model_dir, texts):
    """Score each text alone (no padding) with a freshly loaded model: the reference for the batched judge."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return np.array([model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item() for text in texts])


def test_reward_model_judge_is_sigmoid_of_score_difference(tiny_reward_model):
    judge = RewardModelJudge(tiny_reward_model, batch_size=2, device="cpu")
    assert isinstance(judge, PairwiseJudge)
    result = judge.judge(PROMPTS, CANDIDATES, BASELINES)

    candidate_scores = _manual_scores(tiny_reward_model, [f"{p}\n\n{r}" for p, r in zip(PROMPTS, CANDIDATES)])
    baseline_scores = _manual_scores(tiny_reward_model, [f"{p}\n\n{r}" for p, r in zip(PROMPTS, BASELINES)])
    assert result.preferences.shape == (3,)
    np.testing.assert_allclose(result.preferences, _sigmoid(candidate_scores - baseline_scores), atol=1e-5)
    np.testing.assert_allclose([r["score_candidate"] for r in result.raw], candidate_scores, atol=1e-5)
    assert result.errors == []
    assert "stand-in" in result.judge["description"]


def test_reward_model_judge_uses_the_chat_template(tiny_reward_model, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "with_template"
    shutil.copytree(tiny_reward_model, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
    tokenizer.save_pretrained(model_dir)

    judge = RewardModelJudge(model_dir, batch_size=3, device="cpu")
    assert judge.render("Q", "A") == "<|user|>\nQ\n<|assistant|>\nA\n"
    result = judge.judge(PROMPTS, CANDIDATES, BASELINES)
    candidate_scores = _manual_scores(model_dir, [judge.render(p, r) for p, r in zip(PROMPTS, CANDIDATES)])
    baseline_scores = _manual_scores(model_dir, [judge.render(p, r) for p, r in zip(PROMPTS, BASELINES)])
    np.testing.assert_allclose(result.preferences, _sigmoid(candidate_scores - baseline_scores), atol=1e-5)


# ---------------------------------------------------------------- score-function judge


def test_score_function_judge_wraps_any_scorer_and_carries_extra():
    def length_score(prompts, responses):
        return np.array([len(r) / 10 if r != "broken" else np.nan for r in responses])

    judge = ScoreFunctionJudge(length_score, name="length", description="stand-in: longer wins",
                               extra={"heldout_agreement": 0.71})
    assert isinstance(judge, PairwiseJudge)
    result = judge.judge(["p"] * 3, ["abcde", "a", "broken"], ["a", "abcde", "x"])
    np.testing.assert_allclose(result.preferences[:2], _sigmoid(np.array([0.4, -0.4])))
    assert math.isnan(result.preferences[2])
    assert result.errors == [{"index": 2, "error": "non-finite score"}]
    assert result.judge == {"name": "length", "description": "stand-in: longer wins",
                            "extra": {"heldout_agreement": 0.71}}
    assert win_rate(result.preferences)["n_failed"] == 1
    with pytest.raises(ValueError, match="same length"):
        judge.judge(["p"], ["a", "b"], ["c"])


def test_judgements_round_trip_through_jsonl(tmp_path):
    result = JudgeResult(
        preferences=np.array([1.0, np.nan, 0.25]),
        raw=[{"index": 0, "score_candidate": 2.0}, {"index": 1, "score_candidate": None}, {"index": 2}],
        errors=[{"index": 1, "error": "timeout"}],
        judge={"name": "j", "description": "d", "extra": {"agreement": 0.7}},
    )
    path = tmp_path / "judgements.jsonl"
    save_judgements(result, path)
    assert len(path.read_text().splitlines()) == 3
    assert json.loads((tmp_path / "judgements.jsonl.meta.json").read_text())["n_failed"] == 1
    loaded = load_judgements(path)
    np.testing.assert_array_equal(loaded.preferences, result.preferences)
    assert loaded.raw == result.raw and loaded.errors == result.errors and loaded.judge == result.judge


# ---------------------------------------------------------------- OpenAI-compatible judge


def chat_completion(content: str) -> str:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


def shown_outputs(body: dict) -> tuple[str, str]:
    """The texts the judge showed as Output (a) and Output (b)."""
    user = body["messages"][-1]["content"]
    match = re.search(r"## Output \(a\)\n(.*)\n\n## Output \(b\)\n(.*)\n\nReply with", user, re.DOTALL)
    return match.group(1), match.group(2)


class FakeChatServer:
    """A local OpenAI-compatible endpoint. ``respond(request_number, body) -> (status, text, delay_s)``."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    number = len(outer.requests)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text, delay = outer.respond(number, body)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(text.encode())
                except OSError:
                    pass  # the client gave up waiting (timeout tests)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def start(respond):
        servers.append(FakeChatServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def prefers_good(number, body):
    """A consistent judge: picks whichever output contains GOOD."""
    output_a, _ = shown_outputs(body)
    return 200, chat_completion("a" if "GOOD" in output_a else "(b)"), 0


def test_parse_choice_accepts_one_clear_label_only():
    assert [parse_choice(t) for t in ["a", " B.", "(a)", "Output (b)", '"a"']] == ["a", "b", "a", "b", "a"]
    assert [parse_choice(t) for t in ["", "ab", "I think a", "c"]] == [None] * 4


def test_chat_judge_asks_both_orders_and_sends_the_key(fake_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    server = fake_server(prefers_good)
    judge = OpenAIChatJudge(server.base_url, model="judge-model", api_key_env="JUDGE_KEY", timeout=5)
    assert isinstance(judge, PairwiseJudge)
    result = judge.judge(["q1", "q2"], ["GOOD one", "weak two"], ["weak one", "GOOD two"])

    np.testing.assert_array_equal(result.preferences, [1.0, 0.0])
    assert result.errors == []
    assert len(server.requests) == 4
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert all(r["headers"]["Authorization"] == "Bearer sk-test-123" for r in server.requests)
    assert all(r["body"]["model"] == "judge-model" for r in server.requests)
    shown = sorted(shown_outputs(r["body"]) for r in server.requests)
    assert shown == sorted([("GOOD one", "weak one"), ("weak one", "GOOD one"),
                            ("weak two", "GOOD two"), ("GOOD two", "weak two")])
    exchanges = result.raw[0]["exchanges"]
    assert [e["order"] for e in exchanges] == ["candidate_first", "baseline_first"]
    assert "GOOD one" in exchanges[0]["request"]["messages"][1]["content"]
    assert exchanges[0]["attempts"][0]["response"] == chat_completion("a")
    assert "sk-test-123" not in json.dumps(result.raw)


def test_chat_judge_without_key_sends_no_authorization(fake_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = fake_server(prefers_good)
    OpenAIChatJudge(server.base_url, model="m").judge(["q"], ["GOOD"], ["weak"])
    assert "Authorization" not in server.requests[0]["headers"]


def test_position_bias_cancels(fake_server):
    server = fake_server(lambda number, body: (200, chat_completion("a"), 0))
    result = OpenAIChatJudge(server.base_url, model="m").judge(["q1", "q2"], ["GOOD", "x"], ["y", "GOOD"])
    np.testing.assert_array_equal(result.preferences, [0.5, 0.5])


def test_malformed_replies_are_reported_not_fatal(fake_server):
    def respond(number, body):
        output_a, output_b = shown_outputs(body)
        if "UNSURE" in output_a + output_b:
            return 200, chat_completion("Both are fine, I cannot decide."), 0
        if "BROKEN" in output_a + output_b:
            return 200, "this is not json", 0
        return prefers_good(number, body)

    server = fake_server(respond)
    result = OpenAIChatJudge(server.base_url, model="m", backoff=0.01).judge(
        ["q1", "q2", "q3"], ["GOOD", "UNSURE", "BROKEN"], ["weak", "weak", "weak"]
    )
    assert result.preferences[0] == 1
    assert np.isnan(result.preferences[1:]).all()
    assert [e["index"] for e in result.errors] == [1, 2]
    assert "malformed reply" in result.errors[0]["error"] and "cannot decide" in result.errors[0]["error"]
    assert "malformed response" in result.errors[1]["error"]
    assert result.raw[1]["exchanges"][0]["reply"] == "Both are fine, I cannot decide."
    assert len(server.requests) == 2 + 1 + 1  # q1 both orders; a malformed reply is not retried and ends its prompt
    summary = win_rate(result.preferences)
    assert (summary["win_rate"], summary["n"], summary["n_failed"]) == (100, 1, 2)


def test_timeout_is_retried_then_succeeds(fake_server):
    server = fake_server(lambda number, body: (200, chat_completion("a"), 1.0 if number == 0 else 0))
    judge = OpenAIChatJudge(server.base_url, model="m", timeout=0.3, max_retries=2, backoff=0.01, max_workers=1)
    result = judge.judge(["q"], ["GOOD"], ["weak"])
    assert result.preferences[0] == 0.5  # always "a": one win, one loss
    assert result.errors == []
    first_attempts = result.raw[0]["exchanges"][0]["attempts"]
    assert len(first_attempts) == 2 and "timed out" in first_attempts[0]["error"]


def test_persistent_timeout_is_reported_not_fatal(fake_server):
    server = fake_server(lambda number, body: (200, chat_completion("a"), 1.0))
    judge = OpenAIChatJudge(server.base_url, model="m", timeout=0.3, max_retries=1, backoff=0.01)
    started = time.monotonic()
    result = judge.judge(["q"], ["GOOD"], ["weak"])
    assert time.monotonic() - started < 2.5
    assert np.isnan(result.preferences[0])
    assert len(result.errors) == 1 and "after 2 attempt(s)" in result.errors[0]["error"]
    assert len(server.requests) == 2  # one order, tried twice; the other order is not asked


def test_server_errors_are_retried_and_client_errors_are_not(fake_server):
    def busy_once(number, body):
        return (503, '{"error": "busy"}', 0) if number == 0 else prefers_good(number, body)

    flaky = fake_server(busy_once)
    result = OpenAIChatJudge(flaky.base_url, model="m", backoff=0.01, max_workers=1).judge(["q"], ["GOOD"], ["weak"])
    assert result.preferences[0] == 1
    assert result.raw[0]["exchanges"][0]["attempts"][0] == {"error": "HTTP 503", "response": '{"error": "busy"}'}

    rejecting = fake_server(lambda number, body: (400, '{"error": "bad model"}', 0))
    result = OpenAIChatJudge(rejecting.base_url, model="m", backoff=0.01).judge(["q"], ["GOOD"], ["weak"])
    assert np.isnan(result.preferences[0]) and "HTTP 400" in result.errors[0]["error"]
    assert len(rejecting.requests) == 1


def test_unreachable_server_is_reported_not_fatal():
    judge = OpenAIChatJudge("http://127.0.0.1:9", model="m", timeout=0.3, max_retries=1, backoff=0.01)
    result = judge.judge(["q"], ["a"], ["b"])
    assert np.isnan(result.preferences[0]) and len(result.errors) == 1
