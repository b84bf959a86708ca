"""core.feedback.grid.job on tiny generated data: a run pauses at each epoch end with candidates
ready, a review's marks are saved and continued, Continue puts them on disk and in the
penalty before training resumes, Skip adds nothing, and the version the run makes carries its
reviews, so restoring it restores its penalty set."""
from __future__ import annotations

import time

import pytest
import torch
from support import make_tiny_dataset

from core.engine import TrainConfig
from core.feedback.grid.loss import GridAnnotation
from core.feedback.grid.job import (
    PENDING_KEY,
    GridPageSettings,
    check_settings,
    continue_training,
    load_pending,
    review_model,
    reviews_of_version,
    skip_review,
    start_grid_training,
    waiting_epoch,
)
from core.models import build_model
from core.session.store import Store
from core.session.workbench import Workbench
from core.session.runs import JobOptions


@pytest.fixture
def wb(tmp_path):
    data = make_tiny_dataset(n_per_class=24, size=14)
    model = build_model("seed-cnn", 1, 14, data.num_classes, seed=0)
    wb = Workbench.create(Store(tmp_path / "ws"), data, "tiny", model)
    job = wb.train(TrainConfig(epochs=1, batch_size=16, lr=1e-5), JobOptions("v1"))
    assert job.wait(60) and job.status == "done", job.error
    return wb


def wait_for_review(job, epoch: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while waiting_epoch(job) != epoch:
        assert job.running, f"the job ended ({job.status}: {job.error or job.message}) before the review"
        assert time.time() < deadline, "no pause for a review"
        time.sleep(0.05)


SETTINGS = GridPageSettings(epochs=3, lr=1e-5, batch_size=16, k=3, n=7)  # barely learns: mistakes to review


def test_settings_are_checked_with_sentences():
    assert check_settings(SETTINGS) == []
    problems = check_settings(GridPageSettings(epochs=1, lr=0.0, k=0, sampler="psychic", share=0))
    assert len(problems) == 5 and any("between epochs" in p for p in problems)
    with pytest.raises(ValueError, match="Epochs must be 2"):
        start_grid_training(None, GridPageSettings(epochs=1))
    assert GridPageSettings(n=0).grid((28, 28)) == 7 and GridPageSettings(n=4).grid((28, 28)) == 4
    assert GridPageSettings(n=99).grid((28, 28)) == 7  # an impossible grid falls back to the default
    assert GridPageSettings.from_dict({"k": 5, "from_the_future": 1}).k == 5


def test_review_continue_skip_and_the_version_keeps_its_reviews(wb):
    job = start_grid_training(wb, SETTINGS, seed=1)
    wait_for_review(job, 0)
    assert job.control.waiting and job.running  # paused, candidates ready before the pause
    pending = load_pending(wb, job)
    assert pending is not None and pending.epoch == 0 and pending.n == 7 and 1 <= len(pending.ids) <= 3
    train = set(wb.data.ids("train").tolist())
    assert set(pending.ids) <= train
    model = review_model(wb, job, 0)  # the weights at the pause, for the saliency maps
    assert not model.training
    # marks are saved with each change and a second tab (a fresh load) sees them
    first = pending.ids[0]
    pending.toggle(first, 0)
    pending.toggle(first, 48)
    pending.toggle(first, 3)
    pending.undo_last(first)
    from core.feedback.grid.job import save_pending

    save_pending(wb, pending)
    again = load_pending(wb, job)
    assert again.squares(first) == [0, 48] and again.shown_at == pending.shown_at
    assert wb.get_state(PENDING_KEY)["marks"][str(first)] == [0, 48]
    # Continue: on disk and in the penalty before the job resumes
    anns = continue_training(wb, job, again)
    assert [a.example_id for a in anns] == [first]
    stored = {a.example_id: a.payload for a in wb.annotations("grid")}
    assert stored[first]["squares"] == [0, 48] and stored[first]["epoch"] == 0
    assert len(job.context["penalty"]) == 1 and wb.get_state(PENDING_KEY) is None
    # the next pause: skip it
    wait_for_review(job, 1)
    second = load_pending(wb, job)
    assert not set(second.ids) & set(pending.ids)  # never shown twice in a run
    skip_review(wb, job, second)
    assert job.wait(60) and job.status == "done", job.error or job.message
    reviews = job.context["reviews"]
    assert [r["epoch"] for r in reviews] == [0, 1] and reviews[1]["skipped"] and not reviews[0]["skipped"]
    assert len(job.context["penalty"]) == 1
    steps_terms = [s for s in job.steps_since(None)[1] if len(s) > 3 and s[3] and s[3].get("grid")]
    assert steps_terms, "the penalty never entered the loss after Continue"
    made = wb.current_version
    restored = reviews_of_version(wb, made)
    assert [(a.example_id, a.squares) for a in restored] == [(first, (0, 48))]
    # restoring the version restores its penalty set: a new run starts with it
    wb.restore(1)
    assert reviews_of_version(wb) == []
    wb.restore(made)
    job2 = start_grid_training(wb, SETTINGS, seed=2)
    assert [a.example_id for a in job2.context["penalty"].annotations()] == [first]
    wait_for_review(job2, 0)
    assert first not in load_pending(wb, job2).ids  # an image already in the penalty set is not shown again
    job2.stop()
    assert job2.wait(60)


def test_a_review_with_no_marks_adds_no_penalty(wb):
    job = start_grid_training(wb, GridPageSettings(epochs=2, lr=1e-5, batch_size=16, k=2), seed=3)
    wait_for_review(job, 0)
    pending = load_pending(wb, job)
    assert continue_training(wb, job, pending) == []
    assert job.wait(60) and job.status == "done"
    assert len(job.context["penalty"]) == 0 and job.context["reviews"][0]["annotations"] == []
    assert wb.annotations("grid") == []


def test_reviews_of_version_skips_entries_it_cannot_read(wb):
    good = GridAnnotation(3, 1, (14, 14), 7, (0, 1))
    fb = {"grid": {"inherited": [{"example_id": 3, **good.payload()}, {"example_id": "x"}],
                   "reviews": [{"annotations": [{"nonsense": True}]}]}}
    record = wb.commit_version(wb.model, "hand-made", fb, {}, parent=wb.current_version)
    assert [a.example_id for a in reviews_of_version(wb, record.number)] == [3]
    assert torch.equal(torch.as_tensor(reviews_of_version(wb, record.number)[0].weights()).sum(), torch.tensor(8.0))  # two 2 x 2 squares
