"""Benchmark 7: ten people at once: concurrent browser sessions on loopback, each changing its selection.

A real ``streamlit run dashboard/app.py`` serves ``--sessions`` headless Chromium contexts (one browser, one
context each: separate Streamlit sessions) on ``--pairs`` synthetic pairs with their margins table (the data of
``bench_dashboard.py``). Each session opens the dataset, goes to Margins & Select, and then, all sessions at once,
changes its selection ``--changes`` times: the external-margin slider one step up (odd sessions make three changes
more, untimed, first). Timed per change: from the key press until the script run it starts has finished (the page
then shows that selection). Reported: median and p95 over all changes of all sessions (target p95 <= 2 s on 1,200
pairs on 2 idle cores), and isolation: sessions of one parity must end with the same slider value and count, and the two parities
with different ones (no session sees another's selection).

The machines these run on are shared and loaded: read the p95 with the load average printed beside it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from playwright.async_api import TimeoutError as PlaywrightTimeout  # noqa: E402
from bench_dashboard import CHROMIUM, CHROMIUM_ARGS, make_data, streamlit_server  # noqa: E402

TARGET_P95_S = 2.0
RUN_START_WAIT_MS = 1_000
APP_RUNNING = "[data-testid='stApp'][data-test-script-state='running']"
STEP_TIMEOUT_MS = int(os.environ.get("BENCH_STEP_TIMEOUT_S", "600")) * 1000
APP_IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
METRIC_JS = """() => { const m = [...document.querySelectorAll('[data-testid=stMetric]')]
                         .find(m => m.innerText.includes('Selected pairs'));
                       return m ? m.querySelector('[data-testid=stMetricValue]').innerText.trim() : null; }"""


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--changes", type=int, default=5)
    args = parser.parse_args(argv)
    _common.setup_environment()
    if args.quick:
        args.sessions, args.changes = min(args.sessions, 2), min(args.changes, 2)
    if not CHROMIUM.exists():
        raise SystemExit("no /usr/bin/chromium: run `make browser` (apt-get install chromium)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    home = workdir / "home"
    data_path, margins_path = make_data(args.pairs, workdir, home)
    env = {**os.environ, "MARGIN_LAB_HOME": str(home), "HF_HUB_OFFLINE": "1", "DPO_ENGINE_CACHE": str(workdir / "cache")}
    env.pop("MARGIN_LAB_PASSWORD", None)
    with streamlit_server(_common.REPO_ROOT / "dashboard" / "app.py", env, workdir / "server.log") as url:
        sessions = asyncio.run(run_sessions(url, data_path, args.pairs, args.sessions, args.changes))
    return report(args, sessions)


async def run_sessions(url: str, data_path: Path, n: int, n_sessions: int, n_changes: int) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = await asyncio.gather(*(open_margins_page(browser, url, data_path, n) for _ in range(n_sessions)))
            start = asyncio.Event()
            runs = [change_selection(page, number, n_changes, start) for number, page in enumerate(pages)]
            start.set()
            return await asyncio.gather(*runs)
        finally:
            await browser.close()


async def wait_idle(page) -> None:
    await page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=STEP_TIMEOUT_MS)
    await page.wait_for_selector(APP_IDLE, timeout=STEP_TIMEOUT_MS)


async def open_margins_page(browser, url: str, data_path: Path, n: int):
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=url)
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    await page.goto("/data")
    await wait_idle(page)
    await page.get_by_text("Path or Hub dataset").click()
    await wait_idle(page)
    box = page.get_by_label("Path or Hub dataset name")
    await box.fill(str(data_path))
    await box.press("Enter")
    await page.get_by_text(f"{n:,} of {n:,} pairs").wait_for()
    await wait_idle(page)
    print(f"session ready on the Data page ({n:,} pairs)", flush=True)
    await page.get_by_test_id("stSidebarNav").get_by_text("Margins & Select").click()
    await page.wait_for_function(f"({METRIC_JS})() !== null")
    await wait_idle(page)
    return page


async def change_selection(page, number: int, n_changes: int, start: asyncio.Event) -> dict:
    """Change this session's selection ``n_changes`` times; seconds per change.

    Odd sessions first make three changes untimed: the two parities end in different states, which isolation checks.
    """
    slider = page.get_by_test_id("stSlider").filter(has_text="External margin")
    thumb = slider.get_by_role("slider").first
    if number % 2:
        for _ in range(3):
            await toggle(thumb, page)
    await start.wait()
    seconds = [await toggle(thumb, page) for _ in range(n_changes)]
    return {"group": number % 2, "seconds": seconds, "count": await page.evaluate(METRIC_JS),
            "slider": " ".join((await slider.inner_text()).split())}  # label and thumb values as shown


async def toggle(thumb, page) -> float:
    """Move the external-margin threshold one slider step up; seconds from the key press until the script run it
    starts has finished (the page then shows the new selection)."""
    await thumb.focus()
    started = time.perf_counter()
    await thumb.press("ArrowRight")
    try:
        await page.wait_for_selector(APP_RUNNING, timeout=RUN_START_WAIT_MS)
    except PlaywrightTimeout:
        pass  # the rerun was over before we looked
    await wait_idle(page)
    return time.perf_counter() - started


def report(args, sessions: list[dict]) -> dict:
    seconds = sorted(s for session in sessions for s in session["seconds"])
    p95 = seconds[min(len(seconds) - 1, max(0, round(0.95 * len(seconds)) - 1))]
    groups = {}
    for session in sessions:
        groups.setdefault(session["group"], set()).add((session["slider"], session["count"]))
    isolated = all(len(seen) == 1 for seen in groups.values()) and len({next(iter(v)) for v in groups.values()}) == len(groups)
    results = {"settings": {"pairs": args.pairs, "sessions": args.sessions, "changes": args.changes},
               "median_s": statistics.median(seconds), "p95_s": p95, "max_s": seconds[-1], "isolated": isolated,
               "sessions": sessions, "load_avg_1m": round(os.getloadavg()[0], 2)}
    verdict = "met" if p95 <= TARGET_P95_S else "MISSED"
    print(f"\n## load: {args.sessions} sessions x {args.changes} selection changes, {args.pairs:,} pairs")
    print(_common.table(["sessions", "changes each", "median s", "p95 s", "max s", "isolated", "load avg 1 min"],
                        [[args.sessions, args.changes, results["median_s"], p95, seconds[-1], isolated,
                          results["load_avg_1m"]]]))
    results["ratio"] = (f"RATIO load sessions={args.sessions} changes={args.changes} p95={p95:.2f}s "
                        f"(target<={TARGET_P95_S:.0f}s {verdict}) isolated={isolated}")
    return _common.finish("load", results, args.json_out)


if __name__ == "__main__":
    main()
