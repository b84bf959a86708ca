"""Counterexamples from "ignore this" marks: copies keep every unmarked pixel and every label,
are deterministic, reach the weights alone, and make a model depend less on a marked shortcut."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core.data.spec import DatasetCard, ImageDataset
from core.engine import Batch, TrainConfig, evaluate, fit
from core.feedback.attention.loss import AttentionAnnotation
from core.feedback.counterexamples import (
    CounterexampleSettings,
    CounterexampleTerm,
    counterexample_term,
    ignore_mask,
    make_counterexamples,
)
from core.feedback.grid.loss import GridAnnotation
from core.models import build_model
from core.session.store import Store
from core.session.workbench import Workbench
from core.session.runs import FineTune


def _batch(n=6, c=3, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, c, s, s, generator=g)
    labels = torch.arange(n) % 3
    marks = torch.rand(n, s, s, generator=g) > 0.5
    donors = torch.rand(10, c, s, s, generator=g)
    return images, labels, marks, donors


def test_unmarked_pixels_and_labels_never_change():
    images, labels, marks, donors = _batch()
    copies, ys, source = make_counterexamples(images, labels, marks, donors, k=5, seed=3)
    assert copies.shape == (30, 3, 8, 8) and ys.shape == (30,)
    assert torch.equal(source, torch.arange(6).repeat_interleave(5))
    assert torch.equal(ys, labels[source])
    keep = ~marks[source][:, None].expand_as(copies)
    assert torch.equal(copies[keep], images[source][keep])
    # the marked pixels come from one donor image, at the same place
    for j in range(len(copies)):
        m = marks[source[j]]
        hits = [d for d in range(len(donors)) if torch.equal(copies[j][:, m], donors[d][:, m])]
        assert hits, f"copy {j}: marked pixels are not any donor's"


def test_deterministic_under_a_seed_and_not_its_own_donor():
    images, labels, marks, donors = _batch()
    a = make_counterexamples(images, labels, marks, donors, k=4, seed=7)[0]
    b = make_counterexamples(images, labels, marks, donors, k=4, seed=7)[0]
    c = make_counterexamples(images, labels, marks, donors, k=4, seed=8)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # an image among the donors is never its own donor (that copy would change nothing)
    pool = torch.cat([images[:1], donors[:1]])
    rows, donor_rows = torch.tensor([5]), torch.tensor([5, 9])
    out = make_counterexamples(images[:1], labels[:1], torch.ones(1, 8, 8, dtype=torch.bool), pool, k=20, seed=0,
                               source_rows=rows, donor_rows=donor_rows)[0]
    assert all(torch.equal(o, donors[0]) for o in out)


def test_bad_inputs_say_what_is_wrong():
    images, labels, marks, donors = _batch()
    with pytest.raises(ValueError, match="must match"):
        make_counterexamples(images, labels[:2], marks, donors, k=1)
    with pytest.raises(ValueError, match="donor"):
        make_counterexamples(images, labels, marks, donors[:0], k=1)
    with pytest.raises(ValueError, match="1 to 64"):
        CounterexampleSettings(k=0)


def test_ignore_masks_of_each_kind():
    neg = np.zeros((8, 8), bool)
    neg[0:2, 0:2] = True
    click = AttentionAnnotation.from_masks(1, 0, positives=[(4, 4)], negative=neg)
    assert np.array_equal(ignore_mask(click), neg)
    poly = AttentionAnnotation(2, 0, (8, 8), polygon=((2, 2), (6, 2), (6, 6), (2, 6)), mode="polygon")
    outside = ignore_mask(poly)
    assert outside[0, 0] and not outside[4, 4]
    grid = GridAnnotation(3, 1, (8, 8), 4, (0, 15))
    g = ignore_mask(grid)
    assert g[0:2, 0:2].all() and g[6:8, 6:8].all() and g.sum() == 8
    with pytest.raises(TypeError):
        ignore_mask(object())


def _shortcut_set(n=240, size=16, seed=0):
    """Class = a bar's orientation (horizontal 0, vertical 1); a bright 4x4 corner patch is on
    exactly for class 1 in train (the shortcut), and on at random in test."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = 0.1 * torch.rand(n, 1, size, size, generator=g)
    mid = size // 2
    for i in range(n):
        if labels[i] == 0:
            images[i, 0, mid - 1:mid + 1, 3:size - 3] = 0.6
        else:
            images[i, 0, 3:size - 3, mid - 1:mid + 1] = 0.6
    patch = labels.clone().bool()
    test = torch.arange(n) >= n // 2
    patch[test] = torch.rand(int(test.sum()), generator=g) > 0.5
    images[patch, 0, :4, :4] = 1.0
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 2:size - 2, 2:size - 2] = 1
    masks[:, :, :4, :4] = 0
    order = np.arange(n)
    splits = {"train": order[: n // 2 - 40], "val": order[n // 2 - 40: n // 2 - 20], "pool": order[n // 2 - 20: n // 2],
              "test": order[n // 2:]}
    names = ["h", "v"]
    counts = {s: {c: int((labels[idx] == k).sum()) for k, c in enumerate(names)} for s, idx in splits.items()}
    card = DatasetCard("patch", "generated", "n/a", names, (1, size, size), n, counts)
    return ImageDataset("patch", images.clamp(0, 1), labels, names, splits, card, masks)


def _patch_flip_accuracy(model, data) -> float:
    """Accuracy on test images whose patch disagrees with the shortcut's rule."""
    x, y = data.split("test")
    patch_on = x[:, 0, :4, :4].mean(dim=(1, 2)) > 0.9
    conflicting = patch_on != y.bool()
    return evaluate(model, x[conflicting], y[conflicting]).accuracy


def test_counterexamples_of_marks_on_a_corner_patch_break_the_shortcut():
    data = _shortcut_set()
    torch.manual_seed(0)
    base = build_model("seed-cnn", 1, 16, 2, seed=0)
    # a shortcut learner: the patch is the easiest cue in train
    fit(base, data.split("train"), None, config=TrainConfig(epochs=6, lr=0.02, batch_size=32, seed=0))
    before = _patch_flip_accuracy(base, data)
    ids = data.ids("pool")[:16]
    marks = np.zeros((16, 16), bool)
    marks[:4, :4] = True  # "ignore the corner"
    anns = [AttentionAnnotation.from_masks(int(i), int(data.labels[i]), negative=marks) for i in ids]
    idx = torch.as_tensor(ids)
    config = TrainConfig(epochs=30, lr=0.02, batch_size=16, seed=1)

    plain = copy.deepcopy(base)
    fit(plain, (data.images[idx], data.labels[idx]), None, config=config, train_ids=idx)
    with_cex = copy.deepcopy(base)
    term = counterexample_term(data, anns, CounterexampleSettings(k=4, seed=0))
    fit(with_cex, (data.images[idx], data.labels[idx]), None, config=config, train_ids=idx,
        loss_terms={"counterexamples": term}, weights={"cls": 1.0, "counterexamples": 1.0})
    plain_acc, cex_acc = _patch_flip_accuracy(plain, data), _patch_flip_accuracy(with_cex, data)
    assert before < 0.6, f"the base model should follow the patch (conflicting accuracy {before:.2f})"
    assert cex_acc > plain_acc + 0.2, f"counterexamples {cex_acc:.2f} vs the same images without them {plain_acc:.2f}"


def test_the_term_alone_changes_the_weights(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    ids = tiny_data.ids("pool")[:4]
    neg = np.zeros((16, 16), bool)
    neg[:, :8] = True
    anns = [AttentionAnnotation.from_masks(int(i), int(tiny_data.labels[i]), negative=neg) for i in ids]
    term = counterexample_term(tiny_data, anns, CounterexampleSettings(k=2))
    assert len(term) == 8
    x, y = tiny_data.split("train")
    logits = model(x[:4])
    value = term(model, Batch(x[:4], y[:4], torch.arange(4), None, logits))
    value.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads), "every parameter gets a gradient from the term"
    empty = CounterexampleTerm(tiny_data.images, tiny_data.ids("train"))
    assert float(empty(model, Batch(x[:4], y[:4], torch.arange(4), None, logits))) == 0.0
    # unmarked annotations add no copies; adding more grows the set; an image again replaces its copies
    blank = AttentionAnnotation.from_masks(int(ids[0]), 0, negative=np.zeros((16, 16), bool))
    assert empty.add([blank]) == 0
    assert empty.add(anns[:2]) == 8 and empty.add(anns[:2]) == 8  # k = 4 by default


def test_the_term_makes_the_same_copies_as_make_counterexamples_on_the_whole_donor_set(tiny_data):
    # the term indexes only the k donors it draws; the copies must be those of the reference
    ids = tiny_data.ids("pool")[:3]
    neg = np.zeros((16, 16), bool)
    neg[4:12, :6] = True
    anns = [AttentionAnnotation.from_masks(int(i), int(tiny_data.labels[i]), negative=neg) for i in ids]
    term = counterexample_term(tiny_data, anns, CounterexampleSettings(k=3, seed=2))
    donor_rows = torch.as_tensor(tiny_data.ids("train"))
    expected = []
    for a in anns:
        row = torch.tensor([a.example_id])
        copies, ys, _ = make_counterexamples(tiny_data.images[row], torch.tensor([a.label]), neg[None],
                                             tiny_data.images[donor_rows], k=3, seed=2 * 1_000_003 + a.example_id,
                                             source_rows=row, donor_rows=donor_rows)
        expected.append((copies, ys))
    assert torch.equal(term._x, torch.cat([c for c, _ in expected]))
    assert torch.equal(term._y, torch.cat([y for _, y in expected]))


def test_settings_round_trip_and_off_by_default_when_missing():
    s = CounterexampleSettings(k=3, seed=5)
    assert CounterexampleSettings.from_dict(s.to_dict()) == s
    assert not CounterexampleSettings.from_dict(None).enabled


def test_workbench_fine_tune_through_the_kind_records_counterexamples(workspace, tiny_data):
    store = Store(workspace)
    wb = Workbench.create(store, tiny_data, "tiny", build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0))
    ids = tiny_data.ids("pool")[:4]
    neg = np.zeros((16, 16), bool)
    neg[:, :4] = True
    anns = [AttentionAnnotation.from_masks(int(i), int(tiny_data.labels[i]), positives=[(8, 8)], negative=neg)
            for i in ids]
    job = wb.start_training("attention", anns, FineTune(TrainConfig(epochs=2, batch_size=4, lr=0.01),
                                                        counterexamples=CounterexampleSettings(k=3),
                                                        cls_weight=0.25, kind_weight=0.75))
    assert job.wait(120) and job.status == "done", job.error
    assert set(job.context["terms"]) == {"attention", "counterexamples"}
    record = wb.version(wb.current_version)
    fb = record.feedback
    assert fb["kind"] == "attention" and fb["example_ids"] == [int(i) for i in ids]
    assert fb["counterexamples"]["k"] == 3 and fb["counterexamples"]["made"] == 12
    assert "counterexamples" in record.description
    before = {k: v.clone() for k, v in wb._model_of(0).state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in wb.model.state_dict().items())
    # off: no counterexample term, and the version says so
    job = wb.start_training("attention", anns, FineTune(TrainConfig(epochs=1, batch_size=4),
                                                        counterexamples=CounterexampleSettings(enabled=False)))
    assert job.wait(120) and job.status == "done", job.error
    assert set(job.context["terms"]) == {"attention"}
    assert wb.version(wb.current_version).feedback["counterexamples"] is None
    with pytest.raises(ValueError, match="at least one annotation"):
        wb.start_training("attention", [], FineTune(TrainConfig(epochs=1)))
