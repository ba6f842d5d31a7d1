"""Benchmark 7: ten people at once: concurrent browser sessions on loopback, each changing its selection.

A real ``streamlit run dashboard/app.py`` serves ``--sessions`` headless Chromium contexts (one browser, one
context each: separate Streamlit sessions) on ``--pairs`` synthetic pairs with their margins table (the data of
``bench_dashboard.py``). Each session opens the dataset, goes to Margins & Select, and then, all sessions at once,
changes its selection ``--changes`` times: the external-margin slider one step up (odd sessions make three changes
more, untimed, first). Timed per change: from the key press until the page has processed the end of the script
run it started (it then shows that selection), which includes the browser drawing the page.

The ten browsers stand in for ten laptops, but here they run on the server's machine, so the CPU seconds the
server and the browsers use per change are printed beside the times. With ``--pin`` the server process is pinned
to the first core and the browsers (and this driver) to the others, so they cannot take the server's core;
without it they share every core with it.

With ``--clients protocol`` the sessions are `streamlit_session.StreamlitSession` clients instead: they speak
Streamlit's WebSocket protocol, move the same slider through its widget state and draw nothing, as if each visitor's
browser ran on their own laptop. Timed per change: from the rerun request until the server's ``script_finished``.

Reported: median and p95 of both over all changes of all sessions (target p95 <= 2 s on 1,200 pairs on 2 idle
cores); the CPU seconds per change of the server and of all browsers together; and isolation: sessions of one parity
must end with the same slider value and count, and the two parities with different ones (no session sees another's
selection).

The machines these run on are shared and loaded: read the p95 with the load average printed beside it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
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
    parser.add_argument("--pin", action="store_true", help="server on core 0, browsers on the other cores")
    parser.add_argument("--clients", choices=["browsers", "protocol"], default="browsers",
                        help="protocol: sessions that speak Streamlit's WebSocket protocol and draw nothing, as if "
                             "each browser ran on its visitor's laptop (times the server alone)")
    args = parser.parse_args(argv)
    _common.setup_environment()
    if args.quick:
        args.sessions, args.changes = min(args.sessions, 2), min(args.changes, 2)
    if args.clients == "browsers" and not CHROMIUM.exists():
        raise SystemExit("no /usr/bin/chromium: run `make browser` (apt-get install chromium)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    home = workdir / "home"
    data_path, margins_path = make_data(args.pairs, workdir, home)
    env = {**os.environ, "MARGIN_LAB_HOME": str(home), "HF_HUB_OFFLINE": "1", "DPO_ENGINE_CACHE": str(workdir / "cache")}
    env.pop("MARGIN_LAB_PASSWORD", None)
    server = streamlit_server(_common.REPO_ROOT / "dashboard" / "app.py", env, workdir / "server.log")
    with server as url:
        if args.pin:
            pin(server.process.pid)
        cpu_now = lambda: cpu_seconds(server.process.pid)  # noqa: E731
        if args.clients == "protocol":
            upload = home / "uploads" / data_path.name  # the page opens it from the address (?upload=...)
            upload.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_path, upload)
            sessions, cpu = asyncio.run(run_protocol_sessions(url, upload.name, args.sessions, args.changes, cpu_now))
        else:
            sessions, cpu = asyncio.run(run_sessions(url, data_path, args.pairs, args.sessions, args.changes, cpu_now))
    return report(args, sessions, cpu)


def pin(server_pid: int) -> None:
    """The server on core 0; this process, and so the Playwright driver and browsers it starts, on the others."""
    import psutil

    cores = sorted(psutil.Process().cpu_affinity())
    if len(cores) < 2:
        raise SystemExit("--pin needs at least 2 cores")
    psutil.Process(server_pid).cpu_affinity(cores[:1])
    psutil.Process().cpu_affinity(cores[1:])


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the Streamlit server and by all Chromium processes."""
    import psutil

    used = {"server": 0.0, "browsers": 0.0}
    for process in psutil.process_iter(["pid", "name", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is None:
            continue
        if process.info["pid"] == server_pid:
            used["server"] += times.user + times.system
        elif "chrom" in (process.info["name"] or "") or "headless" in (process.info["name"] or ""):
            used["browsers"] += times.user + times.system
    return used


async def all_at_once(make_runs, cpu_now) -> tuple[list[dict], dict]:
    """Await the coroutines ``make_runs(start)`` returns, which wait for the ``start`` event, released together:
    their results, and the CPU seconds the server and the browsers used (and the wall seconds) meanwhile."""
    start = asyncio.Event()
    runs = make_runs(start)
    before, started = cpu_now(), time.perf_counter()
    start.set()
    results = await asyncio.gather(*runs)
    after = cpu_now()
    return results, {**{name: after[name] - before[name] for name in after}, "wall": time.perf_counter() - started}


async def run_sessions(url: str, data_path: Path, n: int, n_sessions: int, n_changes: int,
                       cpu_now) -> tuple[list[dict], dict]:
    """Each session's timed changes, and the CPU seconds the server and the browsers used while they were made."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = await asyncio.gather(*(open_margins_page(browser, url, data_path, n) for _ in range(n_sessions)))
            return await all_at_once(lambda start: [change_selection(page, number, n_changes, start)
                                                    for number, page in enumerate(pages)], cpu_now)
        finally:
            await browser.close()


async def run_protocol_sessions(url: str, upload: str, n_sessions: int, n_changes: int,
                                cpu_now) -> tuple[list[dict], dict]:
    """As `run_sessions`, with `StreamlitSession` clients on the Margins page instead of browsers."""
    from streamlit_session import StreamlitSession

    sessions = [StreamlitSession(url, "margins", f"upload={upload}") for _ in range(n_sessions)]
    for session in sessions:  # one at a time, as people arrive: the first one loads the dataset for all
        await session.__aenter__()
    try:
        return await all_at_once(lambda start: [change_protocol_selection(session, number, n_changes, start)
                                                for number, session in enumerate(sessions)], cpu_now)
    finally:
        for session in sessions:
            await session.__aexit__()


async def change_protocol_selection(session, number: int, n_changes: int, start: asyncio.Event) -> dict:
    """`change_selection` over the protocol: the external-margin range's low end one slider step up per change."""
    async def step_up() -> float:
        slider = session.find("slider", "External margin")
        low, high = (session.widget_states[slider.id].double_array_value.data if slider.id in session.widget_states
                     else slider.value or slider.default)
        session.set_slider(slider, [round(low + slider.step, 6), high])
        return await session.rerun()

    if number % 2:
        for _ in range(3):
            await step_up()
    await start.wait()
    seconds = [await step_up() for _ in range(n_changes)]
    slider = session.find("slider", "External margin")
    return {"group": number % 2, "seconds": seconds, "count": session.find("metric", "Selected pairs").body,
            "slider": " ".join(f"{value:g}" for value in session.widget_states[slider.id].double_array_value.data)}


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


def percentile_95(values: list[float]) -> float:
    """The nearest-rank 95th percentile of ``values`` (seconds)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def report(args, sessions: list[dict], cpu: dict) -> dict:
    seconds = [s for session in sessions for s in session["seconds"]]
    groups = {}
    for session in sessions:
        groups.setdefault(session["group"], set()).add((session["slider"], session["count"]))
    isolated = all(len(seen) == 1 for seen in groups.values()) and len({next(iter(v)) for v in groups.values()}) == len(groups)
    p95 = percentile_95(seconds)
    # Every change made while the clock ran, the odd sessions' untimed ones too.
    changes = args.sessions * args.changes + 3 * (args.sessions // 2)
    results = {"settings": {"pairs": args.pairs, "sessions": args.sessions, "changes": args.changes, "pin": args.pin,
                            "clients": args.clients},
               "median_s": statistics.median(seconds), "p95_s": p95, "max_s": max(seconds), "isolated": isolated,
               "sessions": sessions, "load_avg_1m": round(os.getloadavg()[0], 2),
               "cpu_s_per_change": {name: round(cpu[name] / changes, 3) for name in ("server", "browsers")},
               "cpu_busy_share": round((cpu["server"] + cpu["browsers"]) / (cpu["wall"] * (os.cpu_count() or 1)), 2)}
    verdict = "met" if p95 <= TARGET_P95_S else "MISSED"
    print(f"\n## load: {args.sessions} sessions x {args.changes} selection changes, {args.pairs:,} pairs"
          + (" (server pinned to core 0, browsers to the others)" if args.pin else "")
          + (" (protocol clients: nothing drawn, the server timed alone)" if args.clients == "protocol" else ""))
    print(_common.table(["sessions", "changes each", "median s", "p95 s", "max s", "isolated", "load avg 1 min",
                         "server CPU s / change", "browsers' CPU s / change", "cores busy"],
                        [[args.sessions, args.changes, results["median_s"], p95, results["max_s"], isolated,
                          results["load_avg_1m"], results["cpu_s_per_change"]["server"],
                          results["cpu_s_per_change"]["browsers"], results["cpu_busy_share"]]]))
    results["ratio"] = (f"RATIO load clients={args.clients} sessions={args.sessions} changes={args.changes} pin={args.pin} p95={p95:.2f}s "
                        f"(target<={TARGET_P95_S:.0f}s {verdict}) isolated={isolated}")
    return _common.finish("load", results, args.json_out)


if __name__ == "__main__":
    main()
