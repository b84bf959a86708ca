"""A timed run of the simulated user through the Attention page in a real browser (issue 11).

    python benchmarks/attention_page_run.py [--images 16] [--json PATH]

Starts `streamlit run app/main.py` on a fresh workspace with cached base models, opens the
Attention page in Chromium, switches to the bundled biased digits, starts a round of
``--images`` candidates, and for each one makes the clicks the benchmark's simulated user
makes (``core.attention_workspace.simulated_annotation``: left-click the mask's centroid,
right-click each attended superpixel outside the object, from the Grad-CAM the page shows),
confirms, and after the last one presses FINE-TUNE. Measured: wall time from START to the
new version (target < 180 s), and whether the page's test-mode numbers equal the library's
``bias_report`` for the same version. Needs Playwright and Debian's chromium.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine, print_table, seeds_record, write_json  # noqa: I001

TARGET_S = 180.0


def _conftest():
    spec = importlib.util.spec_from_file_location("browser_conftest", ROOT / "tests" / "browser" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default: the page's)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    from core.attention_workspace import bias_report, simulated_annotation
    from core.data import load_dataset
    from core.explain import gradcam
    from core.explain.superpixels import superpixels
    from core.models import model_from_checkpoint
    from core.store import Store

    bconf = _conftest()
    ws = Path(tempfile.mkdtemp(prefix="steerboard-attrun-")) / "workspace"
    (ws / "base").mkdir(parents=True)
    for data_name, epochs, lr in (("digits", 3, "0.02"), ("biased-digits", 10, "0.01")):
        subprocess.run([sys.executable, "-m", "core.train", "--data", data_name, "--model", "seed-cnn", "--epochs",
                        str(epochs), "--lr", lr, "--out", str(ws / "base")], cwd=ROOT, check=True, capture_output=True)
    data = load_dataset("biased-digits")
    server = bconf.StreamlitServer(ws).start()
    result: dict = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=bconf.chromium_path(), headless=True, args=bconf.CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1500, "height": 1200}).new_page()
            page.set_default_timeout(90_000)
            page.goto(f"{server.url}/attention")
            page.get_by_role("button", name="Open biased digits").click()
            expect(page.get_by_text(re.compile(r"Started workbench \w+ on biased-digits"))).to_be_visible()
            wb_id = re.search(r"wb=([0-9a-f]{12})", page.url).group(1)
            params = page.locator(".st-key-att-params")
            for label, value in (("Candidates per round", args.images), ("Shown at a time", 8)) + \
                    ((("Epochs", args.epochs),) if args.epochs else ()):
                box = params.get_by_label(label, exact=True)
                box.fill(str(value))
                box.press("Tab")
            page.wait_for_timeout(1000)
            store = Store(ws)
            model = model_from_checkpoint(store.versions(wb_id)[0].checkpoint).eval()
            t0 = time.perf_counter()
            page.get_by_role("button", name="START", exact=True).click()
            expect(page.locator(".st-key-att-grid").last).to_contain_text(f"0 of {args.images} confirmed")
            clicks = 0
            for k in range(args.images):
                title = page.locator(".st-key-att-workspace").last.inner_text()
                example = int(re.search(r"Image (\d+)", title).group(1))
                x = data.images[example]
                cam = gradcam(model, x[None], data.labels[example:example + 1]).cams[0].numpy()
                seg = superpixels(x)
                ann = simulated_annotation(example, int(data.labels[example]), x, data.masks[example, 0].numpy(), cam,
                                           segments=seg)
                img = page.locator(".st-key-att-workspace .sb-click-wrap img").last
                box = img.bounding_box()
                h, w = x.shape[-2:]
                targets = [(px, py, "left") for px, py in ann.positives]
                neg = ann.negative_mask()
                for s in np.unique(seg[neg]):
                    ys, xs = np.nonzero(seg == s)
                    j = len(ys) // 2
                    targets.append((xs[j] + 0.5, ys[j] + 0.5, "right"))
                for px, py, button in targets:
                    page.locator(".st-key-att-workspace .sb-click-wrap img").last.click(
                        position={"x": px / w * box["width"], "y": py / h * box["height"]}, button=button)
                    page.wait_for_timeout(250)
                    clicks += 1
                expect(page.locator(".st-key-att-undo button").last).to_be_enabled()
                page.locator(".st-key-att-confirm button").last.click()
                expect(page.locator(".st-key-att-grid").last).to_contain_text(f"{k + 1} of {args.images} confirmed")
                if (k + 1) % 8 == 0 and k + 1 < args.images:
                    page.get_by_role("button", name="NEXT", exact=True).click()
                    page.wait_for_timeout(500)
            page.locator(".st-key-att-finetune button").last.click()
            expect(page.locator(".st-key-att-status").last).to_contain_text("Finished: version v1", timeout=300_000)
            wall = time.perf_counter() - t0
            page.locator(".st-key-att-test-mode label").last.click()
            metrics = page.locator(".st-key-att-test").last
            expect(metrics).to_contain_text("Bias-conflicting test")
            text = metrics.inner_text()
            shown = [float(v) for v in re.findall(r"(\d+\.\d)%", text)]
            v1 = model_from_checkpoint(store.versions(wb_id)[1].checkpoint)
            lib = bias_report(v1, data)
            expected = [round(lib["test_acc"], 1), round(lib["aligned_acc"], 1), round(lib["attention_in_mask"], 1)]
            result = {"name": "attention_page_run", "ours_s": wall, "target": TARGET_S, "pass": wall < TARGET_S,
                      "page_numbers": shown[:3], "library_numbers": expected,
                      "numbers_equal": [f"{v:.1f}" for v in shown[:3]] == [f"{v:.1f}" for v in expected],
                      "seeds": seeds_record([0], None, "nothing: the page's defaults and the bundled data's seed 0"),
                      "params": {"images": args.images, "clicks": clicks, "epochs": args.epochs, **machine("cpu")}}
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(ws.parent, ignore_errors=True)
    print_table([{k: result[k] for k in ("name", "ours_s", "target", "pass", "numbers_equal")}],
                ["name", "ours_s", "target", "pass", "numbers_equal"])
    print(f"page {result['page_numbers']} vs library {result['library_numbers']}; {result['params']['clicks']} clicks")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main().get("pass") else 1)
