"""Issue 29 in a real browser: opening a dataset from the sidebar shows its steps and how far
each is, across the top of the page, for the whole wait; bad uploads get their message on the
page. ``STEERBOARD_SHOTS=<folder>`` keeps a screenshot of each state there."""
from __future__ import annotations

import io
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
from browser_helpers import Page, expect, expect_text, wait_idle
from PIL import Image
from test_home_browser import LONG, METRICS, assert_no_exception, open_home

SIDEBAR = '[data-testid="stSidebar"]'
BOX = '.st-key-open-progress:not([data-stale="true"])'
ALERT = '[data-testid="stAlert"]'


def shot(page: Page, name: str) -> None:
    folder = os.environ.get("STEERBOARD_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"input-{name}.png"), full_page=True)


def png(value: int, size: int = 28) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def big_tree(root: Path, per_class: int = 1500) -> Path:
    """3 classes of small PNGs: a few seconds to decode on a loaded 2-core machine."""
    g = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            buf = io.BytesIO()
            Image.fromarray(g.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
            (root / cls / f"{i}.png").write_bytes(buf.getvalue())
    return root


def open_typed(page: Page, path: str) -> None:
    sidebar = page.locator(SIDEBAR)
    sidebar.locator('[data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Folder or archive…").click()
    field = sidebar.locator(".st-key-sb-folder input")
    field.fill(path)
    field.press("Tab")
    sidebar.locator(".st-key-sb-open").get_by_role("button").click()


def upload_and_open(page: Page, name: str, data: bytes) -> None:
    sidebar = page.locator(SIDEBAR)
    # after an Open the page draws a new, empty uploader: while that rerun runs, the old copy is still
    # in the DOM beside it, so wait for the rerun and for a single uploader
    wait_idle(page, LONG)
    inputs = sidebar.locator('[data-testid="stFileUploaderDropzoneInput"]')
    if inputs.count() == 0 or not inputs.first.is_visible():
        sidebar.get_by_text("Upload, or add a bias").click()
    expect(inputs).to_have_count(1, timeout=LONG)
    inputs.set_input_files(files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
    expect(sidebar.get_by_text(name).first).to_be_visible(timeout=LONG)  # the uploader lists the file
    sidebar.locator(".st-key-sb-open").get_by_role("button").click()


def test_opening_a_folder_shows_each_step_with_a_bar(page: Page, app_url: str, streamlit_server):
    first = open_home(page, app_url)
    folder = big_tree(streamlit_server.workspace / "data" / f"big-{time.time_ns()}")
    open_typed(page, str(folder))
    seen = []
    deadline = time.monotonic() + LONG / 1000
    while time.monotonic() < deadline:  # what the box says while the page waits, every 0.2 s
        box = page.locator(BOX)
        try:
            if box.count():
                seen.append(box.first.inner_text(timeout=500))
                if len(seen) == 3:
                    shot(page, "open-progress")
        except Exception:  # the box went away between count and read: the open ended
            pass
        if page.locator(ALERT).filter(has_text="Started workbench").count():
            break
        time.sleep(0.2)
    assert seen, "no progress box appeared while the folder opened"
    assert any(re.search(rf"Opening {folder.name} · step 1 of 4: reading the data", t) for t in seen), seen[:3]
    assert any(re.search(r"decoding the images of big-\d+: [\d,]+ of 4,500", t) for t in seen), seen
    assert page.locator(BOX).locator('[role="progressbar"]').count() <= 1
    expect_text(page, ALERT, re.compile(rf"Started workbench [0-9a-f]{{12}} on {folder.name}"), LONG)
    expect(page.locator(BOX)).to_have_count(0)  # gone once the page is drawn
    expect_text(page, METRICS, "Test accuracy", LONG)
    page.wait_for_url(lambda url: f"wb={first}" not in url, timeout=LONG)
    assert_no_exception(page)


def test_bad_uploads_say_what_was_wrong(page: Page, app_url: str):
    open_home(page, app_url)
    upload_and_open(page, "empty.zip", zip_of({}))
    expect_text(page, ALERT, re.compile(r"Upload not opened: empty\.zip: the archive holds no files; zip the folder "
                                        r"that holds your class folders"), LONG)
    shot(page, "upload-empty-zip")
    upload_and_open(page, "one.zip", zip_of({f"only/{i}.png": png(10 * i) for i in range(4)}))
    expect_text(page, ALERT, re.compile(r"Could not open that dataset: one\.zip: found a single class folder "
                                        r"\('only'\); a classifier needs at least two class folders"), LONG)
    shot(page, "upload-one-class")
    good = {f"pets/{c}/{i}.png": png(40 * j + i) for j, c in enumerate("ab") for i in range(6)}
    upload_and_open(page, "pets.zip", zip_of({**good, "pets/b/broken.png": b"\x89PNG\r\n\x1a\n not really"}))
    expect_text(page, ALERT, re.compile(r"Skipped 1 file of pets: pets:b/broken\.png \(UnidentifiedImageError: "
                                        r"cannot identify image file\)\. The other 12 images opened"), LONG)
    shot(page, "upload-corrupt-png")
    assert_no_exception(page)
