"""Rehearsal: a fine-tune on a few annotated images also trains on labelled training images
(core.feedback.rehearsal_ids), through the library and through the workbench, and the page's
and the studies' defaults."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core.feedback import common_plan, rehearsal_ids, with_rehearsal
from core.feedback.attention import workflow as aw
from core.feedback.attention.loss import FEEDBACK as ATTENTION
from core.models import build_model
from core.session.runs import FineTune
from core.session.store import Store
from core.session.workbench import Workbench
from core.study.attention import condition_settings


def _model(data, seed=0):
    c, h, _ = data.image_shape
    return build_model("seed-cnn", c, h, data.num_classes, seed=seed)


def test_rehearsal_ids_come_from_the_training_split_are_seeded_and_skip_the_excluded(tiny_data):
    train = set(tiny_data.ids("train").tolist())
    ids = rehearsal_ids(tiny_data, 10, seed=3, exclude=sorted(train)[:5])
    assert len(ids) == 10 and len(set(ids.tolist())) == 10
    assert set(ids.tolist()) <= train - set(sorted(train)[:5])
    assert torch.equal(ids, rehearsal_ids(tiny_data, 10, seed=3, exclude=sorted(train)[:5]))
    assert not torch.equal(ids, rehearsal_ids(tiny_data, 10, seed=4, exclude=sorted(train)[:5]))
    assert set(rehearsal_ids(tiny_data, 10_000, seed=0).tolist()) == train  # fewer than asked: all of them
    assert len(rehearsal_ids(tiny_data, 0, seed=0)) == 0
    with pytest.raises(ValueError, match="0 or more"):
        rehearsal_ids(tiny_data, -1, seed=0)


def test_with_rehearsal_puts_the_annotated_rows_first_and_adds_other_training_rows(tiny_data):
    annotated = tiny_data.ids("pool")[:3].tolist()
    rows = with_rehearsal(tiny_data, annotated, 5, seed=2)
    assert rows[:3].tolist() == annotated and len(rows) == 8
    assert torch.equal(rows[3:], rehearsal_ids(tiny_data, 5, seed=2, exclude=annotated))
    assert with_rehearsal(tiny_data, annotated, 0, seed=2).tolist() == annotated


def _annotations(data, model, n=4):
    return aw.annotate_like_a_person(model, data, data.ids("pool")[:n])


def test_the_library_and_the_workbench_train_on_the_same_rehearsal_images(tmp_path, tiny_data):
    base = _model(tiny_data)
    anns = _annotations(tiny_data, base)
    ft = aw.PageSettings(rehearsal=12, epochs=1).fine_tune(seed=7, device="cpu")
    lib = aw.fine_tune_plan(tiny_data, anns, ft)
    ids = [a.example_id for a in anns]
    assert lib["train_ids"][:4].tolist() == ids and len(lib["train_ids"]) == 16
    assert torch.equal(lib["train"][1], tiny_data.labels[lib["train_ids"]])  # labels are the data's own
    kind = common_plan(ATTENTION, tiny_data, anns, FineTune(ft.config(), ft.attention(), rehearsal=12))
    assert torch.equal(kind.train_ids, lib["train_ids"])
    assert kind.feedback["rehearsal"] == 12 and kind.description.endswith("+ 12 rehearsal images")
    none = common_plan(ATTENTION, tiny_data, anns, FineTune(ft.config(), ft.attention()))
    assert none.train_ids.tolist() == ids and "rehearsal" not in none.feedback

    wb = Workbench.create(Store(tmp_path / "ws"), tiny_data, "tiny", base)
    wb.replace_annotations(aw.KIND, [ATTENTION.to_payload(a) for a in anns])
    job = aw.start_fine_tune(wb, aw.PageSettings(rehearsal=12, epochs=1))
    job.wait(120)
    assert job.status == "done", job.message
    version = wb.version(wb.current_version)
    assert version.feedback["rehearsal"] == 12 and "12 rehearsal images" in version.description
    assert version.feedback["settings"]["rehearsal"] == 12


def test_rehearsal_alone_changes_the_fine_tune(tiny_data):
    """The same annotations, seed and epochs with and without rehearsal images train different
    weights, and the steps count the rehearsal images' batches."""
    base = _model(tiny_data)
    anns = _annotations(tiny_data, base)
    weights, steps = {}, {}
    for n in (0, 28):
        m = _model(tiny_data)
        ft = aw.FineTuneSettings(dataclasses.replace(aw.FINE_TUNE, epochs=2, batch_size=8, seed=1), rehearsal=n)
        steps[n] = aw.fine_tune(m, tiny_data, anns, ft, guidance=False).steps
        weights[n] = m.conv1.weight.detach().clone()
    assert (steps[0], steps[28]) == (2 * 1, 2 * 4)
    assert not torch.equal(weights[0], weights[28])


def test_the_page_rehearses_by_default_and_old_study_conditions_do_not():
    page = aw.PageSettings()
    assert (page.rehearsal, page.lr) == (aw.ROUND_REHEARSAL, aw.ROUND_LR) and page.rehearsal > 0
    assert page.fine_tune().rehearsal == page.rehearsal
    design = {"task": "attention", "conditions": [{"name": "old", "settings": {"mode": "click"}, "budget": 2},
                                                  {"name": "new", "settings": {"lr": aw.ROUND_LR, "rehearsal": 64},
                                                   "budget": 2}]}
    old, new = condition_settings(design, "old"), condition_settings(design, "new")
    assert (old.rehearsal, old.lr) == (0, aw.FINE_TUNE.lr)  # as that study's participants fine-tuned so far
    assert (new.rehearsal, new.lr) == (64, aw.ROUND_LR)
