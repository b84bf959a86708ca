"""AppTest of the Attention page: switch to biased digits, start a round, annotate two
candidates through the click component, confirm (on disk first), fine-tune, and read test mode."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from apptest_helpers import ROOT, new_app, no_exceptions, prepare_workspace, workbench_of

from core.feedback.attention.workflow import annotations_of, bias_report, load_round

PAGE = str(Path(ROOT) / "pages" / "attention.py")


@pytest.fixture(scope="module")
def biased_workspace(tmp_path_factory):
    """A workspace with cached base models for digits and biased digits (2 quick epochs)."""
    from core.data import load_dataset
    from core.engine import TrainConfig
    from core.models import save_checkpoint
    from core.session.store import Store
    from core.session.workbench import base_checkpoint_path, train_base_model

    ws = prepare_workspace(tmp_path_factory.mktemp("att") / "workspace")
    data = load_dataset("biased-digits")
    model, _ = train_base_model(data, "seed-cnn", config=TrainConfig(epochs=2, lr=0.01))
    save_checkpoint(model, base_checkpoint_path(Store(ws), "biased-digits", "seed-cnn", 0), data.classes)
    return ws


def _on_biased_digits(ws):
    at = new_app(ws).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    assert {"att-open-biased", "att-open-decoy", "att-open-texture"} <= {b.key for b in at.button}
    at.button(key="att-open-biased").click().run()
    deadline = time.time() + 60
    while workbench_of(at).data.name != "biased-digits" and time.time() < deadline:
        at.run()
    assert workbench_of(at).data.name == "biased-digits"
    at.switch_page(PAGE).run()
    no_exceptions(at)
    return at


def _click(at, example_id, x, y, button, n):
    at.session_state[f"att-img-{example_id}"] = {"click": {"x": x, "y": y, "button": button, "n": n}}
    at.run()
    no_exceptions(at)


def _fine_tune_and_wait(at, wb) -> None:
    """Press FINE-TUNE, wait for the attention job to finish, and rerun the page."""
    at.button(key="att-finetune").click().run()
    no_exceptions(at)
    job = wb.jobs.current
    assert job is not None and job.kind == "attention"
    assert job.wait(120) and job.status == "done", job.error
    at.run()
    no_exceptions(at)


@pytest.mark.slow
def test_round_annotate_confirm_fine_tune_and_test_mode(biased_workspace):
    at = _on_biased_digits(biased_workspace)
    wb = workbench_of(at)
    at.number_input(key="att-p-per_round").set_value(2).run()
    at.number_input(key="att-p-epochs").set_value(2).run()
    assert wb.settings["attention"]["per_round"] == 2  # every value saved with the workbench
    at.button(key="att-start").click().run()
    no_exceptions(at)
    rnd = load_round(wb)
    assert rnd is not None and len(rnd.ids) == 2 and rnd.version == wb.current_version  # saved before shown
    assert any("0 of 2 confirmed" in m.value for m in at.markdown)
    for n, example in enumerate(rnd.ids, start=1):
        if at.session_state["att-current"] != example:
            at.button(key=f"att-pick-{example}").click().run()
        _click(at, example, 14.0, 14.0, 0, n)  # left: look here
        _click(at, example, 1.0, 1.0, 2, n + 10)  # right: ignore the background there
        drafts = at.session_state["att-drafts"][example]
        assert drafts["pos"] == [(14.0, 14.0)] and len(drafts["neg"]) == 1
        at.button(key="att-confirm").click().run()
        no_exceptions(at)
        saved = {a.example_id: a for a in annotations_of(wb)}
        assert example in saved and saved[example].positives == ((14.0, 14.0),) and saved[example].negative
        assert saved[example].seconds >= 0 and saved[example].operations == 2
    assert any("2 of 2 confirmed" in m.value for m in at.markdown)
    before = wb.current_version
    _fine_tune_and_wait(at, wb)
    assert wb.current_version == before + 1
    assert wb.version(wb.current_version).description.startswith("attention: 2 images")
    at.toggle(key="att-test-mode").set_value(True).run()
    no_exceptions(at)
    metrics = {m.label: m.value for m in at.metric}
    lib = bias_report(wb.model, wb.data)
    assert metrics["Bias-conflicting test"] == f"{lib['test_acc']:.1f}%"
    assert metrics["Attention on the object"] == f"{lib['attention_in_mask']:.1f}%"


def _annotate_round_and_fine_tune(at, wb):
    """START a round, confirm each candidate with a look-here click and an ignore click,
    FINE-TUNE, and wait for the new version; returns it."""
    at.button(key="att-start").click().run()
    no_exceptions(at)
    rnd = load_round(wb)
    for n, example in enumerate(rnd.ids, start=1):
        if at.session_state["att-current"] != example:
            at.button(key=f"att-pick-{example}").click().run()
        _click(at, example, 14.0, 14.0, 0, n)
        _click(at, example, 1.0, 1.0, 2, n + 10)
        at.button(key="att-confirm").click().run()
        no_exceptions(at)
    before = wb.current_version
    _fine_tune_and_wait(at, wb)
    assert wb.current_version == before + 1
    return wb.version(wb.current_version)


@pytest.mark.slow
def test_counterexample_toggles_are_saved_and_reach_the_version(biased_workspace):
    at = _on_biased_digits(biased_workspace)
    wb = workbench_of(at)
    # the panel's defaults: the attention loss on, counterexamples off (4 per image, greyed out)
    assert at.toggle(key="att-p-guidance").value is True
    assert at.toggle(key="att-p-counterexamples").value is False
    k_box = at.number_input(key="att-p-cex_k")
    assert k_box.value == 4 and k_box.disabled
    assert wb.settings.get("attention", {}).get("counterexamples", False) is False
    # on: saved, and the k box is enabled
    at.toggle(key="att-p-counterexamples").set_value(True).run()
    no_exceptions(at)
    assert wb.settings["attention"]["counterexamples"] is True
    assert not at.number_input(key="att-p-cex_k").disabled
    at.number_input(key="att-p-per_round").set_value(1).run()
    at.number_input(key="att-p-epochs").set_value(1).run()
    at.number_input(key="att-p-cex_k").set_value(3).run()
    no_exceptions(at)
    assert wb.settings["attention"]["cex_k"] == 3 and wb.settings["attention"]["counterexamples"] is True
    record = _annotate_round_and_fine_tune(at, wb)
    cex = record.feedback["counterexamples"]
    assert cex["enabled"] and cex["k"] == 3 and cex["made"] == 3  # one marked image, 3 copies
    assert record.feedback["guidance"] is True
    assert record.description.endswith("+ counterexamples (3 per marked image, 3 made)")
    # off: saved, the k box greys out, and the next version records None
    at.toggle(key="att-p-counterexamples").set_value(False).run()
    no_exceptions(at)
    assert wb.settings["attention"]["counterexamples"] is False
    assert at.number_input(key="att-p-cex_k").disabled
    at.toggle(key="att-test-mode").set_value(True).run()
    no_exceptions(at)
    assert any("3 per marked image" in c.value for c in at.caption)  # test mode says how the version was made
    at.toggle(key="att-test-mode").set_value(False).run()
    record = _annotate_round_and_fine_tune(at, wb)
    assert record.feedback["counterexamples"] is None
    assert "counterexamples" not in record.description
    # the attention loss off too: CE alone on the annotated images, said in the description
    at.toggle(key="att-p-guidance").set_value(False).run()
    no_exceptions(at)
    assert wb.settings["attention"]["guidance"] is False
    assert any("Neither is on" in c.value for c in at.caption)
    record = _annotate_round_and_fine_tune(at, wb)
    assert record.feedback["guidance"] is False and record.feedback["counterexamples"] is None
    assert "without the attention loss" in record.description


@pytest.mark.slow
def test_annotations_and_round_survive_a_refresh(biased_workspace):
    at = _on_biased_digits(biased_workspace)
    wb = workbench_of(at)
    at.number_input(key="att-p-per_round").set_value(3).run()
    at.button(key="att-start").click().run()
    rnd = load_round(wb)
    first = rnd.ids[0]
    if at.session_state["att-current"] != first:
        at.button(key=f"att-pick-{first}").click().run()
    _click(at, first, 10.0, 12.0, 0, 1)
    at.button(key="att-confirm").click().run()
    from streamlit.testing.v1 import AppTest

    fresh = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    fresh.query_params["wb"] = wb.id
    fresh.run()
    fresh.switch_page(PAGE).run()
    no_exceptions(fresh)
    assert load_round(wb).ids == rnd.ids
    assert any("1 of 3 confirmed" in m.value for m in fresh.markdown)
    assert fresh.number_input(key="att-p-per_round").value == 3


def _save_untrained_base(ws, source: str) -> None:
    """A cached (untrained) base model for ``source``, so opening it does not train one."""
    from core.session.base_models import untrained_model
    from core.data import load_dataset
    from core.models import save_checkpoint
    from core.session.store import Store
    from core.session.workbench import base_checkpoint_path

    data = load_dataset(source)
    save_checkpoint(untrained_model(data, "seed-cnn"), base_checkpoint_path(Store(ws), source, "seed-cnn", 0),
                    data.classes)


@pytest.mark.slow
def test_open_decoy_digits_from_the_page(biased_workspace):
    _save_untrained_base(biased_workspace, "decoy-digits")
    at = new_app(biased_workspace).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    assert workbench_of(at).data.name == "digits"  # a new session starts on plain digits: no masks
    assert any("decoy" in m.value for m in at.info)
    at.button(key="att-open-decoy").click().run()
    deadline = time.time() + 60
    while workbench_of(at).data.name != "decoy-digits" and time.time() < deadline:
        at.run()
    wb = workbench_of(at)
    assert wb.data.name == "decoy-digits" and wb.data_source == "decoy-digits"
    assert wb.data.masks is not None and "test_aligned" in wb.data.splits
    at.switch_page(PAGE).run()
    no_exceptions(at)
    assert not any(b.key == "att-open-decoy" for b in at.button)  # it has masks: nothing to offer


def test_polygon_from_canvas_reads_what_the_canvas_really_sends():
    """streamlit-drawable-canvas 0.13 sends a closed polygon as a fabric 7 ``Polygon`` with
    ``points`` in canvas pixels (recorded from Chromium), inside a mapping-like session-state
    value that is not a dict; the Attention page read only the older ``path`` form, so polygon
    mode could never confirm. Both forms are read, and a moved polygon keeps its offset."""
    from types import MappingProxyType

    from app.attention_widgets import polygon_from_canvas

    recorded = {"type": "Polygon", "originX": "center", "originY": "center", "left": 181.5, "top": 181.21875,
                "points": [{"x": 109, "y": 108.21875}, {"x": 254, "y": 108.21875}, {"x": 254, "y": 254.21875},
                           {"x": 109, "y": 254.21875}]}

    def value(*objects):
        return MappingProxyType({"backgroundFit": {}, "drawing": {"raw": {"version": "7.4.0", "objects": list(objects)}}})

    pts = polygon_from_canvas(value(recorded), 13)
    assert [(round(x, 2), round(y, 2)) for x, y in pts] == [(8.38, 8.32), (19.54, 8.32), (19.54, 19.56), (8.38, 19.56)]
    moved = polygon_from_canvas(value({**recorded, "left": 181.5 + 26}), 13)
    assert [round(x - a, 6) for (x, _), (a, _) in zip(moved, pts)] == [2.0] * 4
    old = {"left": 109, "top": 108, "path": [["M", 0, 0], ["L", 145, 0], ["L", 145, 146], ["L", 0, 146], ["z"]]}
    assert polygon_from_canvas(value(old), 1) == [(109, 108), (254, 108), (254, 254), (109, 254)]
    assert polygon_from_canvas(value({"type": "Polygon", "points": [{"x": 1, "y": 1}]}), 1) == []  # not closed
    assert polygon_from_canvas(None, 1) == [] and polygon_from_canvas({}, 1) == []


@pytest.mark.slow
def test_fine_tune_on_what_is_confirmed_so_far_and_after_stop(biased_workspace):
    """FINE-TUNE is there as soon as one image of the round is confirmed (not only when all
    are), says on how many, and STOP says the confirmed images are kept and FINE-TUNE uses
    them; the version is made from exactly the confirmed image."""
    at = _on_biased_digits(biased_workspace)
    wb = workbench_of(at)
    at.number_input(key="att-p-per_round").set_value(3).run()
    at.number_input(key="att-p-epochs").set_value(1).run()
    at.button(key="att-start").click().run()
    no_exceptions(at)
    assert not any(b.key == "att-finetune" for b in at.button)  # nothing confirmed yet
    rnd = load_round(wb)
    first = rnd.ids[0]
    if at.session_state["att-current"] != first:
        at.button(key=f"att-pick-{first}").click().run()
    _click(at, first, 14.0, 14.0, 0, 1)
    at.button(key="att-confirm").click().run()
    no_exceptions(at)
    assert any("1 of 3 confirmed" in m.value for m in at.markdown)
    assert at.button(key="att-finetune").label == "FINE-TUNE on 1 confirmed image"
    at.button(key="att-stop").click().run()
    no_exceptions(at)
    captions = " ".join(c.value for c in at.caption)
    assert "Round 1 stopped. Its 1 confirmed image is kept: FINE-TUNE trains on them" in captions, captions
    assert at.button(key="att-finetune").label == "FINE-TUNE on 1 confirmed image"
    _fine_tune_and_wait(at, wb)
    record = wb.version(wb.current_version)
    assert record.number == 1 and record.feedback["annotations"] == 1 and record.feedback["example_ids"] == [first]
    assert any("Round 1 went into v1" in c.value for c in at.caption)
    assert not any(b.key == "att-finetune" for b in at.button)  # nothing confirmed that v1 has not used


@pytest.mark.slow
def test_events_a_quicker_click_overtook_and_the_hotkey_reach_the_draft(biased_workspace):
    """The click component sends every unacknowledged event with each one (two clicks that
    reach the server together arrive as one trigger value, the newer): the page applies all of
    them once, in order; the x hotkey switches left clicks to 'ignore' and the switch shows it."""
    at = _on_biased_digits(biased_workspace)
    wb = workbench_of(at)
    at.number_input(key="att-p-per_round").set_value(1).run()
    at.button(key="att-start").click().run()
    example = load_round(wb).ids[0]
    key = f"att-img-{example}"
    right = {"kind": "click", "x": 1.0, "y": 1.0, "button": 2, "n": 1001}
    left = {"kind": "click", "x": 14.0, "y": 14.0, "button": 0, "n": 1002}
    at.session_state[key] = {"click": {**left, "queue": [right, left]}}  # the right click's own trigger was lost
    at.run()
    no_exceptions(at)
    d = at.session_state["att-drafts"][example]
    assert d["pos"] == [(14.0, 14.0)] and len(d["neg"]) == 1 and d["ops"] == 2
    at.run()  # the same value again (a replay): nothing applied twice
    assert at.session_state["att-drafts"][example]["ops"] == 2
    assert any("1 point to look at, 1 region to ignore" in c.value for c in at.caption)
    toggle = {"kind": "click", "toggle": True, "n": 1003}
    corner = {"kind": "click", "x": 27.0, "y": 27.0, "button": 0, "n": 1004}
    at.session_state[key] = {"click": {**corner, "queue": [toggle, corner]}}
    at.run()
    no_exceptions(at)
    d = at.session_state["att-drafts"][example]
    assert d["pos"] == [(14.0, 14.0)] and len(d["neg"]) == 2  # the left click after x marked 'ignore'
    assert at.session_state["att-mode-switch"] == "ignore"


@pytest.mark.slow
def test_the_overlay_shows_on_any_background_magenta_included():
    """The Grad-CAM overlay (shared by the Attention and Grid pages) stays visible on any image:
    on each background colour of the biased digits (magenta among them, where the Turbo blend
    alone reached a contrast of 1.8 at most), on black and white, and on a real magenta digit,
    pixels of at least WCAG's 3:1 contrast against the image under them form a closed outline
    around the attended region (the centre cannot be reached from the corner without crossing
    them), in the workspace, a thumbnail and the grid page's picture; opacity 0 draws nothing."""
    import numpy as np
    import torch
    from scipy import ndimage

    from app.attention_widgets import render, render_grid, thumbnail

    def contrast_ratio(a, b):  # WCAG 2 contrast of sRGB colours 0..255 (measured here, not by the helper)
        def lum(c):
            c = np.asarray(c, dtype=np.float64) / 255
            return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ np.array([0.2126, 0.7152, 0.0722])
        la, lb = lum(a), lum(b)
        return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)
    from core.data import load_dataset
    from core.data.biased import PALETTE

    h = w = 28
    yy, xx = np.mgrid[0:h, 0:w]
    cam = np.exp(-((yy - 12) ** 2 + (xx - 15) ** 2) / 25.0)
    data = load_dataset("biased-digits")
    corner = data.images[:, :, 0, 0]
    magenta = int(((corner - PALETTE[4][None]).abs().sum(1) < 0.02).nonzero()[0])
    images = [(f"flat {tuple(int(v) for v in (255 * c).round())}", c.view(3, 1, 1).expand(3, h, w).clone())
              for c in [*PALETTE, torch.zeros(3), torch.ones(3), torch.tensor([1.0, 0.0, 1.0])]]
    images.append((f"biased digit {magenta} (magenta)", data.images[magenta]))
    failures = []
    for name, img in images:
        for what, draw in [
            ("workspace", lambda c, o: render(img, c, size=384, opacity=o)),
            ("thumbnail", lambda c, o: thumbnail(img, c, size=96, opacity=o)),
            ("grid page", lambda c, o: render_grid(img, c, 4, [0], size=256, opacity=o)),
        ]:
            out = np.asarray(draw(cam, 0.45), dtype=np.float64)
            base = np.asarray(draw(None, 0.45), dtype=np.float64)
            assert np.array_equal(np.asarray(draw(cam, 0.0)), base.astype(np.uint8)), f"{what}: opacity 0 drew something"
            strong = contrast_ratio(out, base) >= 3.0
            k = out.shape[0] // h
            labels, _ = ndimage.label(~strong)
            centre, far = labels[12 * k + k // 2, 15 * k + k // 2], labels[out.shape[0] - 2, out.shape[1] - 2]
            if not strong.any() or centre == far:
                failures.append(f"{what} on {name}: max contrast {contrast_ratio(out, base).max():.2f}, "
                                f"{int(strong.sum())} pixels >= 3:1, {'no closed outline' if strong.any() else ''}")
    assert not failures, failures
