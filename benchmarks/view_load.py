"""Size and load time of a circuit page in headless Chromium, and a screenshot of it.

    python benchmarks/view_load.py CIRCUIT_DIR/circuit.html [--screenshot page.png] [--runs 3]

Load time is from navigation start until every node of the graph is drawn.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page")
    parser.add_argument("--screenshot", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--node", help="the node to select before the screenshot, e.g. 1.attn.k:37 (default: the first)")
    args = parser.parse_args()
    page_path = Path(args.page).resolve()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        seconds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_selector("circle.node")
            seconds.append(time.perf_counter() - start)
        nodes, edges = page.locator("circle.node").count(), page.locator("path.edge").count()
        chosen = page.locator(f'circle.node[data-node="{args.node}"]') if args.node else page.locator("circle.node").first
        chosen.click()
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    print(f"{browser.version if hasattr(browser, 'version') else 'chromium'}: {nodes} nodes, {edges} edges, errors {errors}")
    print(f"load seconds: {', '.join(f'{s:.3f}' for s in seconds)}")
    print(f"page_mb={page_path.stat().st_size / 1e6:.2f} load_s_max={max(seconds):.3f}")


if __name__ == "__main__":
    main()
