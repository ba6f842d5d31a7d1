"""Browser tests: a real `streamlit run dashboard/app.py` driven by headless Debian Chromium through Playwright.

`playwright install` cannot download browsers here, so the system Chromium is used (`make browser` installs it).
One server per test session, with its workspace and model cache in temporary directories.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import REPO_ROOT, SHIPPED_MARGINS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL (plotly scattergl) through the software renderer, since there is no GPU.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def server_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dashboard")
    return {
        **os.environ,
        "MARGIN_LAB_HOME": str(root / "home"),
        "DPO_ENGINE_CACHE": str(root / "cache"),
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="session")
def app_url(server_env, tmp_path_factory) -> str:
    """A running dashboard; torn down at the end of the session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    command = [
        sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
        "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=server_env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def context(browser, app_url):
    """One browser context for the session: its HTTP and code caches make later page loads cheaper."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=app_url)
    yield context
    context.close()


@pytest.fixture
def page(context):
    page = context.new_page()
    page.set_default_timeout(45_000)
    yield page
    page.close()


@pytest.fixture(scope="session", autouse=True)
def demo_margins(server_env) -> None:
    """Margins for the bundled UltraFeedback demo: the shipped table, or else a test-only one in the workspace."""
    if SHIPPED_MARGINS.exists():
        return
    from test_dashboard_pages import write_test_margins

    write_test_margins(Path(server_env["MARGIN_LAB_HOME"]))
