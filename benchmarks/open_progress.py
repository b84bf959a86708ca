"""Opening a real dataset in Chromium, end to end (issue 29, "waits without progress").

One Streamlit server (fresh workspace, an empty decoded-image cache, ``../shared/data`` as a
data root), one Chromium page per dataset: choose "Folder or archive…", type the folder, press
Open, then sample the main area's text and every progress bar's value every 0.25 s until the
page says "Started workbench … on <name>" and the metrics are drawn.

Figures, per dataset (``open_progress`` records):

- ``total_s``: Open click to the opened Home page (cold: nothing cached).
- ``longest_unchanged_s``: the longest stretch in which nothing on screen changed (no new
  text, no progress bar moved): what a person waits for without a sign of progress. The issue's
  complaint was 21.7 s (MNIST) and 25 s of greyed page (CIFAR-10).
- ``gaps``: every stretch over 1 s, with the text shown before and after it.

    python benchmarks/open_progress.py [--datasets mnist cifar10] [--json PATH]

Needs Playwright, Debian's chromium and ``../shared/data``; exits with a message otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, print_table, write_json  # noqa: I001
from app_latency import StreamlitServer  # the shared harness (tests/browser/streamlit_server.py)

SHARED = ROOT.parent / "shared" / "data"
SAMPLE_S = 0.25


def open_in_browser(page, url: str, folder: Path, timeout_s: float) -> dict:
    page.goto(url, timeout=240_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=240_000)
    time.sleep(2)
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Folder or archive").first.click()
    page.get_by_label("Folder or archive path", exact=True).fill(str(folder))
    time.sleep(1)
    page.locator('[data-testid="stSidebar"] button:has-text("Open")').first.click()
    t0 = last_change = time.monotonic()
    last, samples, gaps = None, [], []
    while time.monotonic() - t0 < timeout_s:
        try:
            text = page.locator('[data-testid="stMain"]').inner_text(timeout=2000)[:600]
            bars = page.locator('[data-testid="stProgress"] [role="progressbar"]').evaluate_all(
                "els => els.map(e => e.getAttribute('aria-valuenow'))")
        except Exception:  # the page was being redrawn: sampled again next time
            text, bars = last[0] if last else "", list(last[1]) if last else []
        now = time.monotonic()
        state = (text, tuple(bars))
        if state != last:
            if last is not None and now - last_change > 1.0:
                gaps.append({"s": round(now - last_change, 2), "before": last[0][:160].replace("\n", " | "),
                             "after": text[:160].replace("\n", " | ")})
            samples.append(now - last_change)
            last, last_change = state, now
        if f"on {folder.name} with" in text and "Started workbench" in text \
                and page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').count():
            return {"total_s": round(now - t0, 1), "longest_unchanged_s": round(max(samples), 2), "gaps": gaps}
        time.sleep(SAMPLE_S)
    raise TimeoutError(f"{folder.name} did not open within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    missing = [d for d in args.datasets if not (SHARED / d).is_dir()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found under {SHARED}: this benchmark needs the shared data")
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update(STEERBOARD_DATA_ROOTS=str(SHARED), STEERBOARD_DATA_CACHE=str(tmp / "cache"))
        server = StreamlitServer(tmp / "ws", log_path=tmp / "server.log")
        try:
            server.start(120)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium")
                for name in args.datasets:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    row = {"benchmark": "open_progress", "dataset": name, "cache": "cold",
                           **open_in_browser(page, server.url, SHARED / name, args.timeout)}
                    rows.append(row)
                    page.close()
                browser.close()
        finally:
            server.stop()
    print_table(rows, ["dataset", "cache", "total_s", "longest_unchanged_s"])
    for r in rows:
        for g in r["gaps"]:
            print(f"{r['dataset']}: {g['s']} s unchanged after [{g['before'][:90]}]")
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
