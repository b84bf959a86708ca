"""Grid feedback (seed 002): the grid's geometry, annotations round-trip, the penalty alone
trains the first layer through a double backward (the published code's, taken without the
graph, trained nothing), lambda calibration and the penalty set, and the review workflow
(what to review, the simulated user, training with reviews at epoch ends)."""
from __future__ import annotations

import dataclasses
import itertools
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.engine import Batch, Callback, TrainConfig, fit, predict
from core.explain.saliency import input_gradients
from core.feedback import FeedbackKind, get_kind
from core.feedback.grid.loss import (
    FEEDBACK,
    SHARE,
    GridAnnotation,
    GridPenalty,
    GridSettings,
    default_grid,
    describe,
    grid_penalty_values,
    grid_weights,
    square_bounds,
    square_of,
    squares_outside_top,
    squares_without_object,
)
from core.feedback.grid.workflow import (
    ReviewCallback,
    bias_report,
    gradient_in_mask,
    random_review,
    review_candidates,
    review_maps,
    review_rows,
    simulated_review,
    train_with_reviews,
    without_masks,
)
from core.models import build_model


def _model(seed=0):
    return build_model("seed-cnn", 1, 16, 4, seed=seed)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape,n", [((16, 16), 4), ((16, 16), 7), ((10, 13), 3), ((28, 28), 7), ((5, 9), 5), ((7, 7), 1)])
def test_squares_tile_the_image_and_square_of_agrees_with_bounds(shape, n):
    h, w = shape
    owner = np.full(shape, -1)
    for i in range(n * n):
        y0, y1, x0, x1 = square_bounds(i, shape, n)
        assert (owner[y0:y1, x0:x1] == -1).all()  # no overlap
        owner[y0:y1, x0:x1] = i
    assert (owner >= 0).all()  # no gap
    heights = [square_bounds(r * n, shape, n)[1] - square_bounds(r * n, shape, n)[0] for r in range(n)]
    widths = [square_bounds(c, shape, n)[3] - square_bounds(c, shape, n)[2] for c in range(n)]
    assert max(heights) - min(heights) <= 1 and max(widths) - min(widths) <= 1 and min(heights + widths) >= 1
    for y in range(h):
        for x in range(w):
            assert square_of(y, x, shape, n) == owner[y, x]
            assert square_of(y + 0.99, x + 0.5, shape, n) == owner[y, x]  # a click inside the pixel
    assert square_of(-3, -0.5, shape, n) == 0 and square_of(h + 5, w + 0.2, shape, n) == n * n - 1  # clipped


def test_square_bounds_known_values_when_n_does_not_divide_the_side():
    # edges at floor(i * 10 / 3) = 0, 3, 6, 10
    assert square_bounds(0, (10, 10), 3) == (0, 3, 0, 3)
    assert square_bounds(5, (10, 10), 3) == (3, 6, 6, 10)
    assert square_bounds(8, (10, 10), 3) == (6, 10, 6, 10)
    assert square_of(9.5, 2.9, (10, 10), 3) == 6


def test_grid_weights():
    w = grid_weights((10, 10), 3, [0, 4, 8])
    assert w.dtype == np.float32 and w.shape == (10, 10)
    assert w.sum() == 9 + 9 + 16 and w[0, 0] == 1 and w[4, 4] == 1 and w[9, 9] == 1 and w[0, 9] == 0
    assert grid_weights((10, 13), 3, range(9)).sum() == 130  # all squares: every pixel once
    assert grid_weights((10, 10), 3, [4, 4]).sum() == 9  # a square marked twice counts once
    assert grid_weights((10, 10), 3, []).sum() == 0


def test_squares_without_object_on_a_known_mask():
    mask = np.zeros((12, 12))
    mask[5, 5] = 1  # square 4 (edges 0, 4, 8, 12)
    mask[0, 11] = 1  # square 2
    assert squares_without_object(mask, 3) == (0, 1, 3, 5, 6, 7, 8)
    assert squares_without_object(mask[None], 3) == (0, 1, 3, 5, 6, 7, 8)  # (1, H, W) as stored
    assert squares_without_object(np.zeros((12, 12)), 3) == tuple(range(9))
    assert squares_without_object(np.ones((12, 12)), 3) == ()
    assert squares_without_object(mask, 1) == ()


def test_squares_outside_top():
    assert squares_outside_top(np.zeros((12, 12)), 3, 0.1) == tuple(range(9))  # blank: no salient pixel
    s = np.zeros((12, 12))
    s[5, 6] = 3.0  # the one salient pixel, in square 4
    assert squares_outside_top(s, 3, 1 / 144) == (0, 1, 2, 3, 5, 6, 7, 8)
    assert squares_outside_top(s, 3, 0.5) == (0, 1, 2, 3, 5, 6, 7, 8)  # zeros are never "top", whatever the share
    ramp = np.tile(np.arange(12, dtype=float), (12, 1))  # salience grows to the right
    assert squares_outside_top(ramp, 3, 1 / 3) == (0, 1, 3, 4, 6, 7)  # top third = columns 8-11 = right column
    assert squares_outside_top(ramp, 3, 1.0) == ()  # every non-zero pixel is top, and every square has some
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_fraction"):
            squares_outside_top(ramp, 3, bad)


@pytest.mark.parametrize("h,w,n", [(28, 28, 7), (32, 32, 7), (224, 224, 7), (16, 16, 7), (13, 13, 6),
                                   (28, 5, 2), (3, 3, 1), (2, 2, 1), (1, 1, 1)])
def test_default_grid(h, w, n):
    assert default_grid(h, w) == n
    heights = [square_bounds(r * n, (h, w), n)[1] - square_bounds(r * n, (h, w), n)[0] for r in range(n)]
    assert min(heights) >= min(2, h)  # never a 1-pixel square where 2 pixels fit


def test_bad_grid_and_squares_raise_clear_errors():
    with pytest.raises(ValueError, match="a grid over a 4 x 4 image needs 1 to 4 squares per side, got 5"):
        square_bounds(0, (4, 4), 5)
    with pytest.raises(ValueError, match="needs 1 to 8 squares per side, got 0"):
        square_of(1, 1, (8, 8), 0)
    with pytest.raises(ValueError, match="square 16 is not on a 4 x 4 grid"):
        square_bounds(16, (8, 8), 4)
    with pytest.raises(ValueError, match="square -1 is not on"):
        square_bounds(-1, (8, 8), 4)
    with pytest.raises(ValueError, match="squares per side"):
        squares_without_object(np.zeros((4, 4)), 9)
    with pytest.raises(ValueError, match=r"squares \(3, 16\) are not all on a 4 x 4 grid"):
        GridAnnotation(1, 0, (8, 8), 4, (16, 3))
    with pytest.raises(ValueError, match="squares per side"):
        GridAnnotation(1, 0, (8, 8), 9)


# ----------------------------------------------------------------------------- annotations
def test_annotation_round_trips_through_the_kind_and_the_store(tmp_path):
    from core.session.store import Store, VersionRecord

    a = GridAnnotation(7, 2, (16, 16), 4, (5, 1, 5), "smoothgrad", epoch=1, seconds=3.5, operations=4,
                       extra={"user": "me"})
    assert a.squares == (1, 5)  # sorted, once each
    assert np.array_equal(a.weights(), grid_weights((16, 16), 4, (1, 5)))
    assert isinstance(FEEDBACK, FeedbackKind) and get_kind("grid") is FEEDBACK
    assert FEEDBACK.annotation_type is GridAnnotation
    store = Store(tmp_path / "ws")
    wb = store.create_workbench("tiny", "seed-cnn", {}, base=VersionRecord(0, None, 0.0, "b", "x.pt"))
    plain = GridAnnotation(3, 0, (16, 16), 7)
    store.add_annotations(wb.id, FEEDBACK.name, [FEEDBACK.to_payload(a), FEEDBACK.to_payload(plain)])
    back = [FEEDBACK.from_payload(r.example_id, r.payload) for r in store.annotations(wb.id, "grid")]
    assert back == [a, plain]
    assert back[0].shape == (16, 16) and isinstance(back[0].shape, tuple) and isinstance(back[0].squares, tuple)


def test_describe():
    assert describe([]) == "grid: no reviewed images"
    one = GridAnnotation(1, 0, (8, 8), 4, (2,))
    assert FEEDBACK.describe([one]) == "grid: 1 image reviewed, 1 square marked (gradient)"
    anns = [GridAnnotation(1, 0, (8, 8), 4, (0, 1), "gradient", epoch=0),
            GridAnnotation(2, 1, (8, 8), 4, (3,), "smoothgrad", epoch=1),
            GridAnnotation(3, 1, (8, 8), 4, (), "gradient", epoch=1)]
    assert describe(anns) == "grid: 3 images reviewed, 3 squares marked (gradient, smoothgrad), after epochs 1, 2"
    assert describe(anns[:1]) == "grid: 1 image reviewed, 2 squares marked (gradient), after epoch 1"


# ----------------------------------------------------------------------------- the penalty
def _reviews(data, n=6, squares=tuple(range(8, 16))):
    """Marks on the lower half of a 4 x 4 grid for the first ``n`` training images."""
    return [GridAnnotation(int(i), int(data.labels[i]), (16, 16), 4, squares) for i in data.ids("train")[:n]]


def _batch(model, data, rows=slice(0, 8)):
    x, y = data.images[rows], data.labels[rows]
    feats = model.features(x)
    return Batch(x, y, torch.arange(len(x)), feats, model.head(feats))


def test_the_penalty_alone_trains_the_first_layer_only_with_the_graph(tiny_data):
    """The key property: CE-free, the penalty sends gradients to conv1's weights through the
    double backward. Taken without the graph (the published code), it is a constant."""
    model = _model().train()
    anns = _reviews(tiny_data)
    term = FEEDBACK.loss_term(tiny_data, anns, GridSettings(lam=1.0))
    value = term(model, _batch(model, tiny_data))
    assert value.requires_grad and float(value.detach()) > 0
    model.zero_grad(set_to_none=True)
    value.backward()
    for name in ("conv1", "conv2", "conv3", "conv4", "fc1"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name

    idx = torch.as_tensor([a.example_id for a in anns])
    w = torch.from_numpy(np.stack([a.weights() for a in anns]))
    detached = grid_penalty_values(model, tiny_data.images[idx], tiny_data.labels[idx], w, create_graph=False).mean()
    with_graph = grid_penalty_values(model, tiny_data.images[idx], tiny_data.labels[idx], w).mean()
    assert torch.allclose(detached, with_graph)  # the same number ...
    assert not detached.requires_grad  # ... but nothing to back-propagate: it cannot steer the model
    with pytest.raises(RuntimeError):
        detached.backward()
    assert term.raw(model, create_graph=False).requires_grad is False


def test_the_penalty_alone_reaches_the_first_layer_through_batchnorm(tiny_data):
    model = build_model("vgg6", 1, 16, 4, seed=0).train()
    term = GridPenalty(tiny_data.images, _reviews(tiny_data, n=3), lam=1.0)
    model.zero_grad(set_to_none=True)
    term(model, _batch(model, tiny_data, slice(0, 4))).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_training_on_the_penalty_alone_moves_the_first_layer_and_shrinks_the_marked_gradients(tiny_data):
    anns = _reviews(tiny_data, n=4)
    config = TrainConfig(epochs=1, batch_size=24, lr=0.01, weight_decay=0.0)
    probe = GridPenalty(tiny_data.images, anns, lam=1.0)

    control = _model()  # CE weight 0 and no reviews: nothing moves (the test can tell)
    before = control.conv1.weight.detach().clone()
    fit(control, tiny_data.split("train"), None, config=config,
        loss_terms={"grid": GridPenalty(tiny_data.images)}, weights={"cls": 0.0, "grid": 1.0})
    assert torch.equal(control.conv1.weight, before)

    model = _model()
    raw_before = float(probe.raw(model, create_graph=False))
    fit(model, tiny_data.split("train"), None, config=config,
        loss_terms={"grid": GridPenalty(tiny_data.images, anns, lam=1.0)}, weights={"cls": 0.0, "grid": 1.0})
    assert not torch.equal(model.conv1.weight, before)
    assert float(probe.raw(model, create_graph=False)) < raw_before  # gradients inside the marked squares shrink


def test_lambda_is_calibrated_once_to_a_share_of_the_ce(tiny_data):
    model = _model().train()
    anns = _reviews(tiny_data, n=5)
    term = GridPenalty(tiny_data.images, anns, share=0.5)
    assert term.lam is None and not term.calibrated
    batch = _batch(model, tiny_data)
    idx = torch.as_tensor([a.example_id for a in anns])
    w = torch.from_numpy(np.stack([a.weights() for a in anns]))
    raw = float(grid_penalty_values(model, tiny_data.images[idx], tiny_data.labels[idx], w, create_graph=False).mean())
    with torch.no_grad():  # the scale: the CE of the reviewed images themselves, not the batch's
        ce = float(F.cross_entropy(model(tiny_data.images[idx]), tiny_data.labels[idx]))
    batch_ce = float(F.cross_entropy(batch.logits.detach(), batch.y))
    value = term(model, batch)
    assert term.calibrated and math.isclose(term.lam, 0.5 * ce / raw, rel_tol=1e-5)
    assert math.isclose(float(value.detach()), 0.5 * ce, rel_tol=1e-5)  # the penalty starts at share x their CE
    assert term.calibration == pytest.approx({"ce": ce, "batch_ce": batch_ce, "raw": raw, "share": 0.5,
                                              "lam": term.lam}, rel=1e-5)
    assert term.last_raw == pytest.approx(raw, rel=1e-5) and term.last_weighted == pytest.approx(0.5 * ce, rel=1e-5)
    lam = term.lam
    other = _batch(model, tiny_data, slice(20, 30))
    value2 = term(model, other)  # another CE, the same lambda
    assert term.lam == lam and math.isclose(float(value2.detach()), lam * raw, rel_tol=1e-5)

    fixed = GridPenalty(tiny_data.images, anns, lam=2.0)
    assert math.isclose(float(fixed(model, batch).detach()), 2.0 * raw, rel_tol=1e-5)
    assert fixed.lam == 2.0 and not fixed.calibrated
    for bad in ({"lam": -1.0}, {"lam": float("nan")}, {"share": 0.0}):
        with pytest.raises(ValueError):
            GridPenalty(tiny_data.images, **bad)


def test_empty_set_is_a_zero_and_calibration_waits_for_reviews(tiny_data):
    model = _model().train()
    term = GridPenalty(tiny_data.images)
    batch = _batch(model, tiny_data)
    zero = term(model, batch)
    assert float(zero) == 0.0 and not zero.requires_grad and term.lam is None and len(term) == 0
    assert term.raw(model) is None
    # a review with no square marked has nothing to scale against: lambda waits for a step that has
    term.add([GridAnnotation(int(tiny_data.ids("train")[0]), 0, (16, 16), 4, ())])
    assert float(term(model, batch).detach()) == 0.0 and term.lam is None
    term.add(_reviews(tiny_data, n=3))
    assert float(term(model, batch).detach()) > 0 and term.lam is not None and term.calibrated


def _real_values(model, data, anns):
    """Each reviewed image's own penalty, sum W * (d log p_y / d x)^2, computed here by hand
    (one image at a time, autograd on its log-probability), keyed by example id."""
    out = {}
    for a in anns:
        x = data.images[[a.example_id]].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.log_softmax(model(x), dim=1)[0, a.label], x)
        out[a.example_id] = float((torch.from_numpy(a.weights()) * grad[0].pow(2)).sum())
    return out


def test_each_step_takes_the_next_per_step_reviewed_images(tiny_data):
    """The real penalty on a real model: each step's value is the mean of the next ``per_step``
    reviewed images' own penalties (a window rotating in the order they were added), and its
    gradient is theirs: the weights are steered by those images only."""
    model = _model().eval()  # eval: no dropout, so an image's penalty is the same at every step
    ids = [int(i) for i in tiny_data.ids("train")[:5]]
    # a different square for each image, so every image's penalty is its own number
    anns = [GridAnnotation(i, int(tiny_data.labels[i]), (16, 16), 4, (k, 5 + k, 10 + k)) for k, i in enumerate(ids)]
    own = _real_values(model, tiny_data, anns)
    assert all(v > 0 for v in own.values()) and len({round(v, 12) for v in own.values()}) == 5
    term = GridPenalty(tiny_data.images, anns, per_step=2, lam=1.0)
    batch = _batch(model, tiny_data, slice(0, 2))
    windows = [ids[0:2], ids[2:4], [ids[4], ids[0]], ids[1:3]]
    for window in windows:
        want = np.mean([own[i] for i in window])
        for _ in range(2):  # reading the window has no side effect: the same images each time
            assert float(term.raw(model, create_graph=False)) == pytest.approx(want, rel=1e-5), window
        assert float(term(model, batch).detach()) == pytest.approx(want, rel=1e-5), window  # a step uses it, then moves on

    # the gradient reaching the weights is exactly that of the window's own penalties
    term = GridPenalty(tiny_data.images, anns, per_step=2)
    model.zero_grad(set_to_none=True)
    term.raw(model).backward()
    via_term = {n: p.grad.clone() for n, p in model.named_parameters()}
    window = [a for a in anns if a.example_id in ids[0:2]]
    model.zero_grad(set_to_none=True)
    w = torch.from_numpy(np.stack([a.weights() for a in window]))
    x = tiny_data.images[[a.example_id for a in window]]
    grid_penalty_values(model, x, torch.as_tensor([a.label for a in window]), w).mean().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(via_term[name], p.grad, rtol=1e-4, atol=1e-10), name
    assert via_term["conv1.weight"].abs().sum() > 0

    small = GridPenalty(tiny_data.images, anns[:2], per_step=4)  # fewer than per_step: all of them, every step
    for _ in range(2):
        assert float(small.raw(model, create_graph=False)) == pytest.approx((own[ids[0]] + own[ids[1]]) / 2, rel=1e-5)


def test_add_replaces_a_re_reviewed_image_and_checks_the_shape(tiny_data):
    """Re-reviewing an image replaces its marks: the real penalty is then that of the new
    marks, and training on the penalty alone shrinks the input gradient inside the new squares."""
    model = _model().eval()
    a, b = (int(i) for i in tiny_data.ids("train")[:2])
    la, lb = int(tiny_data.labels[a]), int(tiny_data.labels[b])
    term = GridPenalty(tiny_data.images, per_step=8)
    old = [GridAnnotation(a, la, (16, 16), 4, (0,)), GridAnnotation(b, lb, (16, 16), 4, (1,))]
    assert term.add(old) == 2
    new_a = GridAnnotation(a, la, (16, 16), 4, (0, 5, 10, 15))
    assert term.add([new_a]) == 2
    assert [(x.example_id, x.squares) for x in term.annotations()] == [(a, (0, 5, 10, 15)), (b, (1,))]
    before = _real_values(model, tiny_data, [new_a, old[1]])
    stale = _real_values(model, tiny_data, old)
    assert before[a] != pytest.approx(stale[a], rel=1e-3)  # the test can tell the old marks from the new
    assert float(term.raw(model, create_graph=False)) == pytest.approx((before[a] + before[b]) / 2, rel=1e-5)

    # its effect: a few steps on this penalty alone shrink the gradient inside the new squares
    term.lam = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batch = _batch(model, tiny_data, slice(0, 2))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        term(model, batch).backward()
        opt.step()
    assert any(not torch.equal(start[n], p) for n, p in model.named_parameters())
    after = _real_values(model, tiny_data, [new_a, old[1]])
    assert after[a] < before[a] and after[b] < before[b]

    with pytest.raises(ValueError, match=r"review of example 9 is for \(8, 8\), the images are \(16, 16\)"):
        term.add([GridAnnotation(9, 0, (8, 8), 2, (0,))])
    assert len(term) == 2


def test_adding_from_another_thread_while_training_reads(tiny_data):
    model = _model().train()
    term = GridPenalty(tiny_data.images, _reviews(tiny_data, n=2), per_step=2, lam=1.0)
    batch = _batch(model, tiny_data, slice(0, 4))
    ids = [int(i) for i in tiny_data.ids("train")[2:30]]
    errors = []

    def reviewer():
        try:
            for i in ids:
                term.add([GridAnnotation(i, int(tiny_data.labels[i]), (16, 16), 4, (i % 16,))])
        except Exception as exc:  # noqa: BLE001 - any error in the thread fails the test below
            errors.append(exc)

    thread = threading.Thread(target=reviewer)
    thread.start()
    values = []
    while thread.is_alive() or len(values) < 10:
        values.append(float(term(model, batch).detach()))
    thread.join()
    assert not errors and all(math.isfinite(v) for v in values)
    assert len(term) == 2 + len(ids)


# ----------------------------------------------------------------------------- what to review
def test_review_candidates_are_ranked_mistakes(tiny_data):
    model = _model().train()
    ids = tiny_data.ids("train")
    logits, _ = predict(model, tiny_data.images[torch.as_tensor(ids)])
    probs = torch.softmax(logits, 1)
    wrong = probs.argmax(1) != tiny_data.labels[torch.as_tensor(ids)]
    mistakes = set(ids[wrong.numpy()].tolist())
    assert 3 < len(mistakes) < len(ids)  # an untrained model: some right, some wrong

    every = review_candidates(model, tiny_data, k=1000)
    assert model.training  # mode restored
    assert set(every.tolist()) == mistakes and len(every) == len(mistakes)  # k too large: all there are
    entropy = {int(i): float(-(p * p.log()).sum()) for i, p in zip(ids, probs)}
    h = [entropy[int(i)] for i in every]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(h))  # most uncertain first
    top = review_candidates(model, tiny_data, k=3)
    assert top.tolist() == every[:3].tolist()
    excluded = every[:2].tolist()
    rest = review_candidates(model, tiny_data, k=1000, exclude=excluded)
    assert not set(rest.tolist()) & set(excluded) and set(rest.tolist()) == mistakes - set(excluded)

    margin = review_candidates(model, tiny_data, k=1000, method="margin")
    gaps = [float(np.diff(np.sort(probs[list(ids).index(i)].numpy())[-2:])[0]) for i in margin]
    assert set(margin.tolist()) == mistakes and all(a <= b + 1e-9 for a, b in itertools.pairwise(gaps))
    r1, r2 = (review_candidates(model, tiny_data, k=4, method="random", seed=s) for s in (1, 1))
    assert r1.tolist() == r2.tolist() and set(r1.tolist()) <= mistakes
    assert set(review_candidates(model, tiny_data, k=1000, split="val").tolist()) <= set(tiny_data.ids("val").tolist())
    assert len(review_candidates(model, tiny_data, k=0)) == 0
    with pytest.raises(ValueError, match="Unknown review sampler 'kcenter'"):
        review_candidates(model, tiny_data, method="kcenter")


# ----------------------------------------------------------------------------- simulated user
def test_simulated_review_marks_exactly_the_squares_without_object(tiny_data):
    ids = [int(i) for i in tiny_data.ids("train")[:8]]
    anns = simulated_review(tiny_data, ids, n=4, epoch=2)
    for a in anns:
        # tiny_data's object is the horizontal band of rows 4c..4c+3: on a 4 x 4 grid, row c of squares
        c = int(tiny_data.labels[a.example_id])
        assert a.squares == tuple(s for s in range(16) if s // 4 != c)
        assert a.label == c and a.epoch == 2 and a.n == 4 and a.operations == 12
        assert (a.weights() * tiny_data.masks[a.example_id, 0].numpy()).sum() == 0  # nothing on the object
    default = simulated_review(tiny_data, ids[:2])
    assert default[0].n == default_grid(16, 16) and [a.example_id for a in default] == ids[:2]
    for a in default:  # every unmarked square holds object pixels
        mask = tiny_data.masks[a.example_id, 0].numpy()
        for s in set(range(a.n * a.n)) - set(a.squares):
            y0, y1, x0, x1 = square_bounds(s, (16, 16), a.n)
            assert mask[y0:y1, x0:x1].any()


def test_random_review_marks_as_many_squares_at_random(tiny_data):
    ids = [int(i) for i in tiny_data.ids("train")[:8]]
    like = simulated_review(tiny_data, ids, n=4)
    a, b, c = (random_review(tiny_data, ids, n=4, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    assert [x.example_id for x in a] == ids and [len(x.squares) for x in a] == [len(x.squares) for x in like]
    assert [x.squares for x in a] != [x.squares for x in like]  # object squares get marked too


def test_reviews_need_masks(tiny_data):
    ids = [int(i) for i in tiny_data.ids("train")[:3]]
    with pytest.raises(ValueError, match="tiny has no object masks"):
        simulated_review(dataclasses.replace(tiny_data, masks=None), ids)
    has = np.ones(len(tiny_data.images), bool)
    has[ids[1]] = False
    partial = dataclasses.replace(tiny_data, has_mask=has)
    with pytest.raises(ValueError, match=rf"examples \[{ids[1]}\] have no object mask"):
        random_review(partial, ids)
    assert without_masks(partial).tolist() == [ids[1]]
    assert len(simulated_review(partial, [ids[0], ids[2]])) == 2
    with pytest.raises(ValueError, match="marks must be"):
        ReviewCallback(_model(), tiny_data, GridPenalty(tiny_data.images), epochs=2, marks="clicks")


# ----------------------------------------------------------------------------- training with reviews
class _Steps(Callback):
    def __init__(self):
        self.steps = []

    def on_step(self, info):
        self.steps.append(info)


def test_train_with_reviews_reviews_at_epoch_ends_and_trains_on_the_penalty(tiny_data):
    model, record = _model(), _Steps()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.001)
    run = train_with_reviews(model, tiny_data, config, k=4, callbacks=[record])
    assert run.result.status == "done"
    assert [r.epoch for r in run.reviews] == [0, 1]  # not after the last epoch: nothing trains after it
    assert len(run.reviews[0].ids) == 4
    sizes = [r.penalty_size for r in run.reviews]
    reviewed = [i for r in run.reviews for i in r.ids]
    assert len(reviewed) == len(set(reviewed))  # an image is reviewed once
    assert sizes == sorted(sizes) and sizes[-1] == len(run.penalty) == len(reviewed) > 4
    assert all(a.epoch == r.epoch and a.squares == simulated_review(tiny_data, [a.example_id])[0].squares
               for r in run.reviews for a in r.annotations)
    assert [a.example_id for a in run.annotations] == reviewed and run.ids_by_epoch == {r.epoch: r.ids for r in run.reviews}

    assert all("grid" in s.terms for s in record.steps)
    first = [s.terms["grid"] for s in record.steps if s.epoch == 0]
    later = [s.terms["grid"] for s in record.steps if s.epoch > 0]
    assert first == [0.0] * len(first)  # no review yet
    assert all(v > 0 for v in later)
    cal = run.penalty.calibration  # lambda set at the first step with reviews: the penalty starts at share x CE
    assert later[0] == pytest.approx(cal["share"] * cal["ce"]) and cal["share"] == SHARE
    assert run.penalty.calibrated and run.penalty.lam > 0

    report = bias_report(model, tiny_data)
    assert set(report) == {"test_acc", "aligned_acc", "gradient_in_mask"}
    assert report["aligned_acc"] is None and 0 <= report["test_acc"] <= 100 and 0 <= report["gradient_in_mask"] <= 100

    rows = review_rows(run.annotations, tiny_data.classes)
    assert len(rows) == len(reviewed) and rows[0]["epoch"] == 1 and rows[0]["label"] in tiny_data.classes
    assert rows[0]["marked_pixels"] == int(run.annotations[0].weights().sum()) > 0


def test_train_without_marks_is_the_baseline(tiny_data):
    model, record = _model(), _Steps()
    run = train_with_reviews(model, tiny_data, TrainConfig(epochs=2, batch_size=16, lr=0.001), marks=None,
                             callbacks=[record])
    assert run.penalty is None and run.reviews == [] and run.annotations == []
    assert record.steps and all(s.terms == {} for s in record.steps)
    same = _model()  # the same as a plain fit
    fit(same, tiny_data.split("train"), tiny_data.split("val"),
        config=TrainConfig(epochs=2, batch_size=16, lr=0.001), train_ids=torch.as_tensor(tiny_data.ids("train")))
    assert torch.equal(same.conv1.weight, model.conv1.weight)


def test_gradient_in_mask_is_the_share_on_the_object(tiny_data):
    model = _model().train()
    x, y = tiny_data.images[:6], tiny_data.labels[:6]
    ones, zeros = torch.ones(6, 1, 16, 16), torch.zeros(6, 1, 16, 16)
    assert gradient_in_mask(model, x, ones, y) == pytest.approx(1.0)
    assert gradient_in_mask(model, x, zeros, y) == 0.0
    left = zeros.clone()
    left[..., :8] = 1
    g = input_gradients(model.eval(), x, y).pow(2).sum(1)  # eval mode, as gradient_in_mask takes it
    model.train()
    expected = float((g[..., :8].sum((1, 2)) / g.sum((1, 2))).mean())
    assert gradient_in_mask(model, x, left, y, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert model.training



STEEP_LAMBDA = 800.0


@pytest.mark.slow
def test_a_review_marking_one_empty_corner_does_not_wreck_a_fine_tune():
    """CI found it: on biased-digits a grid run whose review marked one background corner
    square ended diverged, or left the model far below its start, on some seeds (lambda is
    calibrated on a near-flat region, ~300-800, and the double backward then gave steps that
    wrecked the weights). With the engine's gradient clip for feedback terms
    (TrainConfig.term_grad_norm) these seeds train like a run with no penalty. Without it
    (term_grad_norm=None) seed 0 ended at 39 %, seed 2 diverged, seed 3 at 20 %.

    Lambda is fixed at 800, the steep end of what that machine's calibration gave: the
    calibrated value follows the base model's floating-point path, and on another CPU the
    same seeds calibrate at 60-200, a case that is not steep. At 800 without the clip, seed 0
    ends at 37 %, seed 2 diverges and seed 3 ends at 29 % here."""
    import copy

    from core.data import load_dataset
    from core.engine import evaluate
    from core.session.workbench import train_base_model

    data = load_dataset("biased-digits")
    torch.manual_seed(0)
    base, _ = train_base_model(data, "seed-cnn", config=TrainConfig(epochs=2, lr=0.01))
    train, val = data.split("train"), data.split("val")
    shape = tuple(data.image_shape[1:])
    for seed in (0, 2, 3):
        g = torch.Generator().manual_seed(seed)
        picked = [int(i) for i in torch.randint(0, len(data.images), (2,), generator=g)]
        reviews = [GridAnnotation(example_id=i, label=int(data.labels[i]), shape=shape, n=7, squares=(0,))
                   for i in picked]
        penalty = FEEDBACK.loss_term(data, reviews, GridSettings(share=SHARE, lam=STEEP_LAMBDA))
        model = copy.deepcopy(base)
        result = fit(model, train, val, config=TrainConfig(epochs=2, lr=0.005, seed=seed), loss_terms={"grid": penalty})
        assert penalty.lam == STEEP_LAMBDA and penalty.last_weighted is not None  # the steep penalty was applied
        assert not result.diverged, (seed, result.message)
        assert evaluate(model, *val).accuracy >= 0.9, seed


# ----------------------------------------------------------------------------- what the reviewer sees
def test_review_maps_are_scaled_per_image_and_come_with_the_predictions(tiny_data):
    model = _model()
    ids = [int(i) for i in tiny_data.ids("train")[:5]]
    shown = review_maps(model, tiny_data, ids, "gradient")
    assert shown.maps.shape == (5, *tiny_data.image_shape[1:]) and shown.method == "gradient" and not shown.fallback
    assert shown.maps.min() >= 0 and shown.maps.max() <= 1
    # scaled by each map's 99th percentile: about 1 % of each map's pixels saturate, the rest does not
    assert all(0 < (m >= 1).mean() <= 0.05 for m in shown.maps)
    expected = predict(model, tiny_data.images[torch.as_tensor(ids)])[0].argmax(1).numpy()
    assert np.array_equal(shown.predictions, expected)
    empty = review_maps(model, tiny_data, [], "gradient")
    assert empty.maps.shape == (0, *tiny_data.image_shape[1:]) and len(empty.predictions) == 0


def test_review_maps_fall_back_to_the_input_gradient_and_say_why(tiny_data, monkeypatch):
    import core.explain.saliency as saliency

    real = saliency.saliency_maps

    def no_deeplift(model, images, targets, method="gradient", **kw):
        if method == "deeplift":
            raise ValueError("DeepLift cannot trace this model.")
        return real(model, images, targets, method, **kw)

    monkeypatch.setattr(saliency, "saliency_maps", no_deeplift)
    ids = [int(i) for i in tiny_data.ids("train")[:3]]
    shown = review_maps(_model(), tiny_data, ids, "deeplift")
    assert shown.method == "gradient" and shown.fallback == "DeepLift cannot trace this model."
    assert np.allclose(shown.maps, review_maps(_model(), tiny_data, ids, "gradient").maps)
