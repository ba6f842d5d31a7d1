"""Secrets stay home: judge endpoints come from an allow-list, the key goes only to those, plain http only locally.

A real local HTTP server records the headers it receives. Also: a saved evaluation loads without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from dpo_engine.errors import ConfigError
from dpo_engine.evaluation import judge_endpoints, store
from dpo_engine.evaluation.judge_factory import judge_specs, make_judge
from dpo_engine.evaluation.judges import JudgeResult, OpenAIChatJudge


@pytest.fixture
def recording_server():
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers 'a' and records each request's headers."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server hook's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(dict(self.headers))
            body = json.dumps({"choices": [{"message": {"content": "a"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    server.shutdown()


def test_the_key_goes_only_to_allow_listed_endpoints(recording_server, monkeypatch):
    base_url, received = recording_server
    monkeypatch.setenv("LOCAL_JUDGE_KEY", "sk-secret-1")
    monkeypatch.setenv(judge_endpoints.ENDPOINTS_ENV, json.dumps(
        {"local": {"base_url": base_url, "model": "m", "api_key_env": "LOCAL_JUDGE_KEY"}}))

    listed = make_judge("openai:local")
    listed.judge(["q"], ["x"], ["y"])
    assert {headers.get("Authorization") for headers in received} == {"Bearer sk-secret-1"}
    assert "sk-secret-1" not in json.dumps([listed.extra, listed.description, listed.name])

    received.clear()
    monkeypatch.setenv(judge_endpoints.ENDPOINTS_ENV, "{}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-2")
    unlisted = make_judge(f"openai:{base_url}:m")  # typed URL, not allow-listed: no key at all
    unlisted.judge(["q"], ["x"], ["y"])
    assert received and all("Authorization" not in headers for headers in received)


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.0.0.5:8000/v1", "ftp://127.0.0.1/v1"])
def test_plain_http_only_to_loopback(url, monkeypatch):
    with pytest.raises(ConfigError, match="only to 127.0.0.1"):
        OpenAIChatJudge(url, model="m")
    with pytest.raises(ConfigError, match="not allowed|not an allow-listed") as refused:
        make_judge(f"openai:{url}:m")
    assert refused.value.field == "judge"
    monkeypatch.setenv(judge_endpoints.ENDPOINTS_ENV, json.dumps({"bad": {"base_url": url, "model": "m"}}))
    with pytest.raises(ConfigError, match=r"MARGIN_LAB_JUDGE_ENDPOINTS\[bad\]"):
        judge_endpoints.allowed_endpoints()


def test_the_allow_list_is_read_from_a_file_and_offered_by_name(tmp_path, monkeypatch):
    path = tmp_path / "judges.json"
    path.write_text(json.dumps({"team": {"base_url": "https://judge.example.org/v1", "model": "big"}}))
    monkeypatch.setenv(judge_endpoints.ENDPOINTS_ENV, str(path))
    assert list(judge_specs()) == ["builtin", "openai:team"]
    judge = make_judge("openai:team")
    assert judge.url == "https://judge.example.org/v1/chat/completions" and judge.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match="'elsewhere' is not an allow-listed judge endpoint"):
        make_judge("openai:elsewhere")
    path.write_text('{"team": ')
    with pytest.raises(ConfigError, match="not valid JSON"):
        judge_specs()


def test_loading_a_saved_evaluation_imports_no_torch(workspace):
    per_prompt = pd.DataFrame({"prompt_id": ["p1"], "run_id": ["r"], "dataset": ["d"], "instruction": ["i"],
                               "output": ["o"], "output_tokens": [1], "baseline_output": ["b"], "preference": [1.0]})
    results = pd.DataFrame([{"run_id": "r", "variant": "v", "win_rate": 100.0}], columns=store.RESULT_COLUMNS)
    judged = JudgeResult(preferences=np.array([1.0]), raw=[{}], errors=[], judge={})
    prompts = pd.DataFrame({"prompt_id": ["p1"]})
    saved = store.save_evaluation("torch-free", results, per_prompt, [("r", judged)], prompts, {"name": "torch-free"})

    code = ("import sys; from dpo_engine.evaluation import store; "
            f"loaded = store.load_eval({saved.eval_id!r}); "
            "assert loaded.results.win_rate.tolist() == [100.0], loaded.results; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    checked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "MARGIN_LAB_HOME": str(workspace)})
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "[]"
    escaped = store.save_evaluation("../../outside", results, per_prompt, [], prompts, {})
    assert escaped.directory.parent == workspace / "evals" and escaped.eval_id.startswith("outside-")
