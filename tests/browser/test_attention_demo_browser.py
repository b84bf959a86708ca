"""The demo of issue 28: the simulated user's round on the Attention page, driven by the same
code as benchmarks/attention_page_run.py (browser_helpers.run_attention_demo), on the bundled
decoy digits with a small round: the page's "Open decoy digits" button opens the set, the clicks
are stored as meant, FINE-TUNE makes a version, and test mode shows the library's numbers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from browser_helpers import ROOT, Page, run_attention_demo, thread_env


@pytest.fixture(scope="module")
def decoy_workspace(make_workspace, tmp_path_factory):
    """A workspace with the digits base model and a decoy-digits one (3 epochs, via the CLI)."""
    out = tmp_path_factory.mktemp("decoy-base")
    cmd = [sys.executable, "-m", "core.train", "--data", "decoy-digits", "--model", "seed-cnn", "--epochs", "3",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **thread_env()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ws = make_workspace("ws-attention-demo")
    for f in out.glob("*.pt"):
        shutil.copy2(f, ws / "base" / f.name)
    return ws


@pytest.mark.browser
def test_the_demo_round_on_decoy_digits_makes_a_version_with_the_librarys_numbers(start_server, decoy_workspace,
                                                                                    page: Page):
    server = start_server(decoy_workspace)
    run = run_attention_demo(page, server.url, server.workspace, "decoy-digits", images=4, epochs=2)
    assert run["version"] == 1 and run["images"] == 4
    assert run["annotations_as_intended"] == 4, run["mismatches"]  # every image's clicks reached the store as meant
    assert run["clicks"] >= 4  # at least the positive click on each image
    assert run["numbers_equal"], (run["page_numbers"], run["library_numbers"])
    assert len(run["page_numbers"]) == 3  # bias-conflicting, bias-aligned, attention on the object
    assert run["feedback"]["settings"]["epochs"] == 2 and run["feedback"]["annotations"] == 4
    assert page.locator('[data-testid="stException"]').count() == 0
