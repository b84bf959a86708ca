"""Issue 13 in a real browser: upload a .zip ImageFolder from the sidebar and train on it;
reopen an earlier workbench from the Workbenches list."""
from __future__ import annotations

import io
import re
import zipfile

import numpy as np
from browser_helpers import Page, expect, expect_text
from PIL import Image
from test_home_browser import LONG, METRICS, assert_no_exception, open_home, train_version, workbench_id

SIDEBAR = '[data-testid="stSidebar"]'


def pets_zip() -> bytes:
    """Two classes told apart by a bright bar (top or bottom), 20 small PNGs each, inside a
    wrapper folder as a zip made by a file manager would have it."""
    g = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for c, cls in enumerate(["cat", "dog"]):
            for i in range(20):
                img = (g.random((20, 20)) * 60).astype(np.uint8)
                img[c * 10:(c + 1) * 10, :] += 150
                png = io.BytesIO()
                Image.fromarray(img).save(png, format="PNG")
                zf.writestr(f"pets/{cls}/{i:02d}.png", png.getvalue())
    return buf.getvalue()


def test_upload_a_zip_image_folder_and_train_on_it(page: Page, app_url: str):
    first = open_home(page, app_url)
    sidebar = page.locator(SIDEBAR)
    sidebar.get_by_text("Upload, or add a bias").click()
    uploader = sidebar.locator('[data-testid="stFileUploaderDropzoneInput"]')
    uploader.set_input_files(files=[{"name": "pets.zip", "mimeType": "application/zip", "buffer": pets_zip()}])
    expect(sidebar.get_by_text("pets.zip")).to_be_visible(timeout=LONG)  # the uploader lists the file
    sidebar.locator(".st-key-sb-open").get_by_role("button").click()
    page.wait_for_url(lambda url: f"wb={first}" not in url and re.search(r"wb=[0-9a-f]{12}", url) is not None,
                      timeout=LONG)
    expect_text(page, SIDEBAR, re.compile(r"Workbench `?[0-9a-f]{12}`? · pets"), LONG)
    expect_text(page, METRICS, "Test accuracy", LONG)
    assert_no_exception(page)
    train_version(page, 1, epochs=2, batch=16)
    assert_no_exception(page)


def test_reopen_a_workbench_from_the_list(page: Page, app_url: str):
    first = open_home(page, app_url)
    train_version(page, 1)
    # a second workbench in this tab: the same data with another model, from the sidebar
    sidebar = page.locator(SIDEBAR)
    sidebar.get_by_label("Model").click()
    page.get_by_role("option", name="vgg6", exact=True).click()
    sidebar.locator(".st-key-sb-open").get_by_role("button").click()
    page.wait_for_url(lambda url: f"wb={first}" not in url, timeout=LONG)
    second = workbench_id(page)
    expect_text(page, METRICS, "Test accuracy", LONG)
    # the list has both; open the first again
    page.get_by_role("link", name="Workbenches").click()
    table = page.locator('[data-testid="stDataFrame"]').first
    expect(table).to_be_visible(timeout=LONG)
    page.get_by_label("Workbench", exact=True).click()
    page.get_by_role("option", name=re.compile(rf"^{first} · ")).click()
    page.locator(".st-key-wbl-open").get_by_role("button").click()
    page.wait_for_url(re.compile(rf"[?&]wb={first}\b"), timeout=LONG)
    expect_text(page, ".st-key-sb-version", re.compile(r"Model version:\s*v1\b"), LONG)
    assert workbench_id(page) == first != second
    assert_no_exception(page)
