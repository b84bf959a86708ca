"""AppTest of the Grid feedback page: a run pauses at the first epoch end, two squares are
marked on a reviewed image, Continue stores them (on disk first) and resumes, the penalty's
series appears in the live chart, and the new version carries the review."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from apptest_helpers import ROOT, new_app, no_exceptions, prepare_workspace, workbench_of

from core.feedback.grid.job import PENDING_KEY, reviews_of_version, waiting_epoch

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

PAGE = str(Path(ROOT) / "pages" / "grid.py")


@pytest.fixture(scope="module")
def biased_workspace(tmp_path_factory):
    """A workspace with cached base models for digits and biased digits (2 quick epochs)."""
    from core.data import load_dataset
    from core.engine import TrainConfig
    from core.models import save_checkpoint
    from core.session.store import Store
    from core.session.workbench import base_checkpoint_path, train_base_model

    ws = prepare_workspace(tmp_path_factory.mktemp("grid") / "workspace")
    data = load_dataset("biased-digits")
    model, _ = train_base_model(data, "seed-cnn", config=TrainConfig(epochs=2, lr=0.01))
    save_checkpoint(model, base_checkpoint_path(Store(ws), "biased-digits", "seed-cnn", 0), data.classes)
    return ws


def _until(at, condition, timeout: float = 90.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
        at.run()
        no_exceptions(at)


def _chart_series(at) -> set[str]:
    import json

    names = set()
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        names |= {t.get("name") for t in spec.get("data", [])}
    return names


def test_pause_mark_two_squares_continue_and_the_penalty_series(biased_workspace):
    at = new_app(biased_workspace).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    assert {"grid-open-biased", "grid-open-decoy", "grid-open-texture"} <= {b.key for b in at.button}
    at.button(key="grid-open-biased").click().run()
    _until(at, lambda: workbench_of(at).data.name == "biased-digits", what="the biased-digits workbench")
    at.switch_page(PAGE).run()
    no_exceptions(at)
    wb = workbench_of(at)
    at.number_input(key="grid-p-epochs").set_value(2).run()
    at.number_input(key="grid-p-k").set_value(3).run()
    assert wb.settings["grid"]["epochs"] == 2 and wb.settings["grid"]["k"] == 3  # saved with the workbench
    before = wb.current_version
    at.button(key="grid-start-btn").click().run()
    no_exceptions(at)
    job = wb.jobs.current
    assert job is not None and job.kind == "grid"
    _until(at, lambda: waiting_epoch(job) == 0 and len(at.get("image")) > 0 and
           any("review" in m.value for m in at.markdown), what="the pause at the end of epoch 1")
    pending = wb.get_state(PENDING_KEY)
    assert pending and pending["epoch"] == 0 and 1 <= len(pending["ids"]) <= 3
    example = pending["ids"][0]
    key = f"grid-img-0-{example}"
    # two clicks: the top-left square (0) and the bottom-right one (48) of the 7 x 7 grid
    at.session_state[key] = {"click": {"x": 1.0, "y": 1.0, "button": 0, "n": 1}}
    at.run()
    at.session_state[key] = {"click": {"x": 27.0, "y": 27.0, "button": 0, "n": 2}}
    at.run()
    no_exceptions(at)
    saved = wb.get_state(PENDING_KEY)  # every click saved while the job waits
    assert saved["marks"][str(example)] == [0, 48]
    # two clicks that reach the server in one request (a quick second click during the first's rerun): the
    # trigger is the newest, its queue holds every click not acknowledged yet, n=2 (applied) among them
    queue = [{"kind": "click", "x": 27.0, "y": 27.0, "button": 0, "n": 2},
             {"kind": "click", "x": 15.0, "y": 1.0, "button": 0, "n": 3}]
    at.session_state[key] = {"click": {"x": 1.0, "y": 15.0, "button": 0, "n": 4, "queue": queue}}
    at.run()
    no_exceptions(at)
    assert sorted(wb.get_state(PENDING_KEY)["marks"][str(example)]) == [0, 3, 21, 48]  # 3 and 4 applied, 2 not again
    at.session_state[key] = {"click": {"x": 15.0, "y": 1.0, "button": 0, "n": 5}}  # unmark square 3
    at.run()
    at.session_state[key] = {"click": {"x": 1.0, "y": 15.0, "button": 0, "n": 6}}  # and square 21
    at.run()
    assert sorted(wb.get_state(PENDING_KEY)["marks"][str(example)]) == [0, 48]
    assert job.running and job.control.waiting  # still waiting: nothing resumes without Continue
    at.button(key="grid-continue").click().run()
    no_exceptions(at)
    stored = {a.example_id: a.payload for a in wb.annotations("grid")}
    assert stored[example]["squares"] == [0, 48] and stored[example]["epoch"] == 0
    assert len(job.context["penalty"]) == 1 and job.context["reviews"][0]["ids"] == pending["ids"]
    _until(at, lambda: not job.running, what="the end of the run")
    assert job.status == "done", job.error or job.message
    assert "grid term" in _chart_series(at)  # the penalty as its own series in the live chart
    assert wb.current_version == before + 1
    restored = reviews_of_version(wb)
    assert [a.example_id for a in restored] == [example] and restored[0].squares == (0, 48)
    assert any(b.proto.label.startswith("Reviews") for b in at.get("download_button"))


def _grid_run(at, wb, mark: bool):
    """Start a 2-epoch run, at its pause mark one square of the first image (or not) and
    continue; returns the job once it ended."""
    at.button(key="grid-start-btn").click().run()
    no_exceptions(at)
    job = wb.jobs.current
    assert job is not None and job.kind == "grid"
    _until(at, lambda: waiting_epoch(job) == 0 and any(b.key == "grid-continue" for b in at.button), what="the pause")
    if mark:
        example = wb.get_state(PENDING_KEY)["ids"][0]
        at.session_state[f"grid-img-0-{example}"] = {"click": {"x": 1.0, "y": 1.0, "button": 0, "n": 1}}
        at.run()
        no_exceptions(at)
    at.button(key="grid-continue").click().run()
    no_exceptions(at)
    _until(at, lambda: not job.running, what="the end of the run")
    assert job.status == "done", job.error or job.message
    return job


def test_counterexample_toggles_are_saved_and_reach_the_version(biased_workspace):
    at = new_app(biased_workspace).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    wb = workbench_of(at)
    if wb.data.name != "biased-digits":
        at.button(key="grid-open-biased").click().run()
        _until(at, lambda: workbench_of(at).data.name == "biased-digits", what="the biased-digits workbench")
        at.switch_page(PAGE).run()
        wb = workbench_of(at)
    # the panel's defaults: the penalty on, counterexamples off (4 per image, greyed out)
    assert at.toggle(key="grid-p-penalty").value is True
    assert at.toggle(key="grid-p-counterexamples").value is False
    assert at.number_input(key="grid-p-cex_k").value == 4 and at.number_input(key="grid-p-cex_k").disabled
    assert wb.settings.get("grid", {}).get("counterexamples", False) is False
    assert any("Marked images go to the penalty;" in c.value for c in at.caption)  # the start caption: no counterexamples
    # on: saved, and the k box is enabled
    at.toggle(key="grid-p-counterexamples").set_value(True).run()
    no_exceptions(at)
    assert wb.settings["grid"]["counterexamples"] is True
    assert not at.number_input(key="grid-p-cex_k").disabled
    at.number_input(key="grid-p-epochs").set_value(2).run()
    at.number_input(key="grid-p-k").set_value(2).run()
    at.number_input(key="grid-p-cex_k").set_value(3).run()
    no_exceptions(at)
    assert wb.settings["grid"]["cex_k"] == 3
    assert any("3 counterexamples per image" in c.value for c in at.caption)  # the start caption says so
    job = _grid_run(at, wb, mark=True)
    record = wb.version(wb.current_version)
    cex = record.feedback["counterexamples"]
    assert cex["enabled"] and cex["k"] == 3
    assert cex["made"] == 3 * len(job.context["penalty"]) > 0  # every reviewed image's copies, made during the run
    assert record.description.endswith("+ counterexamples (3 per marked image)")
    assert any("Counterexamples: 3 per marked image" in c.value for c in at.caption)  # the results panel
    # off: saved, the k box greys out, and the next version records None
    at.toggle(key="grid-p-counterexamples").set_value(False).run()
    no_exceptions(at)
    assert wb.settings["grid"]["counterexamples"] is False
    assert at.number_input(key="grid-p-cex_k").disabled
    _grid_run(at, wb, mark=True)
    record = wb.version(wb.current_version)
    assert record.feedback["counterexamples"] is None and "counterexamples" not in record.description
    # both off: the page warns and refuses to start
    at.toggle(key="grid-p-penalty").set_value(False).run()
    no_exceptions(at)
    assert wb.settings["grid"]["penalty"] is False
    assert any("Turn on the penalty" in w.value for w in at.warning)
    at.button(key="grid-start-btn").click().run()
    assert any("Not started" in e.value for e in at.error)
    # counterexamples alone (the penalty off)
    at.toggle(key="grid-p-counterexamples").set_value(True).run()
    no_exceptions(at)
    job = _grid_run(at, wb, mark=True)
    record = wb.version(wb.current_version)
    assert set(job.context["terms"]) == {"counterexamples"}
    assert record.feedback["guidance"] is False and record.feedback["counterexamples"]["made"] > 0


def test_skip_resumes_without_feedback(biased_workspace):
    at = new_app(biased_workspace).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    wb = workbench_of(at)
    if wb.data.name != "biased-digits":
        at.button(key="grid-open-biased").click().run()
        _until(at, lambda: workbench_of(at).data.name == "biased-digits", what="the biased-digits workbench")
        at.switch_page(PAGE).run()
        wb = workbench_of(at)
    at.number_input(key="grid-p-epochs").set_value(2).run()
    at.number_input(key="grid-p-k").set_value(2).run()
    start_size = len(reviews_of_version(wb))
    at.button(key="grid-start-btn").click().run()
    job = wb.jobs.current
    _until(at, lambda: waiting_epoch(job) == 0 and any(b.key == "grid-skip" for b in at.button), what="the pause")
    at.button(key="grid-skip").click().run()
    no_exceptions(at)
    _until(at, lambda: not job.running, what="the end of the run")
    assert job.status == "done"
    assert job.context["reviews"][0]["skipped"] is True
    assert len(job.context["penalty"]) == start_size  # the set it started with, nothing added


def test_open_texture_digits_from_the_page(biased_workspace):
    """The texture set opens from the page's offer and the page draws on it (it has test_aligned)."""
    from core.session.base_models import untrained_model
    from core.data import load_dataset
    from core.models import save_checkpoint
    from core.session.store import Store
    from core.session.workbench import base_checkpoint_path

    data = load_dataset("texture-digits")
    path = base_checkpoint_path(Store(biased_workspace), "texture-digits", "seed-cnn", 0)
    save_checkpoint(untrained_model(data, "seed-cnn"), path, data.classes)
    at = new_app(biased_workspace).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    assert workbench_of(at).data.name == "digits"
    at.button(key="grid-open-texture").click().run()
    _until(at, lambda: workbench_of(at).data.name == "texture-digits", what="the texture-digits workbench")
    at.switch_page(PAGE).run()
    no_exceptions(at)
    assert not any(b.key == "grid-open-texture" for b in at.button)  # a known shortcut: nothing to offer
