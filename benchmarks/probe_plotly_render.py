"""Diagnostic for benchmark 4: how long plotly.js alone takes to draw the margin scatter in headless Chromium.

No Streamlit: the dashboard's own figure (``dashboard.figures.margin_scatter``, N synthetic pairs, coloured, lean
hover) is drawn with ``Plotly.newPlot``, then redrawn with ``Plotly.react`` after the selection changes, as WebGL
(scattergl) and, for scale, as SVG. This bounds what any page built on the figure can reach on the machine: with
software WebGL (swiftshader, no GPU) the draw alone can exceed the 2 s target.

    python benchmarks/probe_plotly_render.py [--pairs 60000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository on sys.path)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--allow-file-access-from-files"]
DRAW = """async ([spec, kind]) => {
    const frames = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const figure = JSON.parse(spec);
    if (kind === 'svg') figure.data[0].type = 'scatter';
    const t0 = performance.now();
    await Plotly.newPlot('chart', figure.data, figure.layout); await frames();
    const t1 = performance.now();
    figure.data[0].selectedpoints = figure.data[0].selectedpoints.slice(0, 1000);
    await Plotly.react('chart', figure.data, figure.layout); await frames();
    const t2 = performance.now();
    JSON.parse(spec);
    return [t1 - t0, t2 - t1, performance.now() - t2];
}"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60_000)
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import plotly
    from playwright.sync_api import sync_playwright

    from dashboard.figures import margin_scatter

    rng = np.random.default_rng(0)
    n = args.pairs
    table = pd.DataFrame({"pair_id": [f"syn-{i}" for i in range(n)], "external_margin": rng.integers(0, 10, n) * 0.5,
                          "implicit_margin": rng.normal(0, 2, n)})
    figure = margin_scatter(table, None, selected=table.external_margin.to_numpy() > 1, color=rng.random(n),
                            color_label="score")
    spec = figure.to_json()
    workdir = Path(tempfile.mkdtemp(prefix="probe-plotly-"))
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    (workdir / "index.html").write_text(
        f"<html><body><div id=chart style='width:1200px;height:620px'></div>"
        f"<script src='file://{plotly_js}'></script></body></html>"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"file://{workdir}/index.html")
        print(f"{n:,} points, figure JSON {len(spec) / 1e6:.1f} MB")
        for kind in ("webgl", "svg"):
            new_plot, react, parse = page.evaluate(DRAW, [spec, kind])
            print(f"{kind}: newPlot {new_plot / 1000:.2f} s, react after a new selection {react / 1000:.2f} s, "
                  f"JSON.parse {parse / 1000:.3f} s")
        browser.close()


if __name__ == "__main__":
    main()
