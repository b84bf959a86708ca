""""Mark all squares outside the top x%" refuses, with a message, when it would mark every square
(a blank map) or none (a flat one), instead of silently fencing off the whole image (issue 29:
it marked 49 of 49 squares without a word). Core rule, then the Grid page under AppTest."""
from __future__ import annotations

import time

import numpy as np
import pytest
from apptest_helpers import ROOT, new_app, no_exceptions, workbench_of

from core.feedback.grid.workflow import outside_top_marks

PAGE = str(ROOT / "pages" / "grid.py")


def test_a_blank_map_marks_nothing_and_says_why():
    rule = outside_top_marks(np.zeros((28, 28)), 7, 10)
    assert rule.squares == ()
    assert "All 49 squares lie outside the top 10%" in rule.message and "blank" in rule.message
    assert "Nothing was marked" in rule.message and "by hand" in rule.message


def test_a_flat_map_whose_top_touches_every_square_marks_nothing_and_says_why():
    rule = outside_top_marks(np.ones((28, 28)), 7, 10)
    assert rule.squares == () and "None of the 49 squares" in rule.message and "flat" in rule.message


def test_a_map_with_a_salient_corner_marks_every_other_square():
    sal = np.zeros((28, 28))
    sal[:4, :4] = 1.0  # square 0 holds the top pixels
    rule = outside_top_marks(sal, 7, 2)
    assert rule.message is None and rule.squares == tuple(range(1, 49))


# ----------------------------------------------------------------------------- the page
@pytest.fixture
def paused_grid(tmp_path):
    """An AppTest on the Grid page of a biased-digits workbench (untrained model: it makes
    plenty of mistakes, and no base model has to be trained) whose grid run waits for the
    review after epoch 1. Stops the run at the end."""
    from core.data import load_dataset
    from core.feedback.grid.job import waiting_epoch
    from core.models import build_model
    from core.session.store import Store
    from core.session.workbench import Workbench

    data = load_dataset("biased-digits")
    wb = Workbench.create(Store(tmp_path / "ws"), data, "biased-digits", build_model("seed-cnn", 3, 28, 10, seed=0))
    at = new_app(tmp_path / "ws", {"wb": wb.id}).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    live = workbench_of(at)
    at.number_input(key="grid-p-epochs").set_value(2).run()
    at.number_input(key="grid-p-k").set_value(2).run()
    at.button(key="grid-start-btn").click().run()
    job = live.jobs.current
    assert job is not None and job.kind == "grid"
    deadline = time.time() + 120
    while not (waiting_epoch(job) == 0 and any(b.key == "grid-outside-top" for b in at.button)):
        assert time.time() < deadline and job.running, "the run never paused for its review"
        time.sleep(0.3)
        at.run()
    no_exceptions(at)
    yield at, live, job
    job.stop()
    job.wait(60)


def _with_map(at, live, job, saliency: np.ndarray) -> int:
    """Make the review's saliency maps ``saliency`` (the page's per-job cache), returns the
    image the workspace shows."""
    from core.feedback.grid.job import PENDING_KEY, job_token

    pending = live.get_state(PENDING_KEY)
    maps = np.stack([saliency] * len(pending["ids"])).astype(np.float32)
    at.session_state["grid-maps"] = {(job_token(job), 0, "gradient"): (maps, np.zeros(len(pending["ids"]), np.int64))}
    return pending["ids"][pending["current"]]


@pytest.mark.slow
def test_the_page_warns_and_marks_nothing_on_a_blank_map_and_marks_on_a_real_one(paused_grid):
    from core.feedback.grid.job import PENDING_KEY

    at, live, job = paused_grid
    example = _with_map(at, live, job, np.zeros((28, 28)))
    at.slider(key="grid-top").set_value(10)
    at.button(key="grid-outside-top").click().run()
    no_exceptions(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "All 49 squares lie outside the top 10% of this map" in warnings and "Nothing was marked" in warnings
    assert live.get_state(PENDING_KEY)["marks"].get(str(example), []) == []  # nothing marked, nothing saved
    assert any("0 of 49 squares" in m.value for m in at.markdown)

    _with_map(at, live, job, np.ones((28, 28)))  # flat: the top touches every square
    at.button(key="grid-outside-top").click().run()
    assert "None of the 49 squares" in " ".join(w.value for w in at.warning)
    assert live.get_state(PENDING_KEY)["marks"].get(str(example), []) == []

    corner = np.zeros((28, 28))
    corner[:4, :4] = 1.0
    _with_map(at, live, job, corner)
    at.slider(key="grid-top").set_value(2)
    at.button(key="grid-outside-top").click().run()
    no_exceptions(at)
    assert not any("Nothing was marked" in w.value for w in at.warning)
    assert live.get_state(PENDING_KEY)["marks"][str(example)] == list(range(1, 49))
