"""Attention clicks (seed 001): annotations round-trip, the guidance term alone trains the
backbone (the published code's did not), and a few steps move the attention where asked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.engine import Batch, TrainConfig, fit
from core.explain import gradcam
from core.feedback import FeedbackKind, get_kind, kinds
from core.feedback.attention.loss import (
    FEEDBACK,
    AttentionAnnotation,
    AttentionLoss,
    AttentionSettings,
    attention_in_mask,
    cam_barycentre,
    mask_to_rle,
    polygon_mask,
    rle_to_mask,
)
from core.models import build_model


def _model(seed=0):
    return build_model("seed-cnn", 1, 16, 4, seed=seed)


def _conv_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.abs().sum().item() for n, p in model.named_parameters() if n.startswith("conv") and p.grad is not None}


def test_rle_and_polygon_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 9)) > 0.6
        assert np.array_equal(rle_to_mask(mask_to_rle(m), m.shape), m)
    assert np.array_equal(rle_to_mask(mask_to_rle(np.ones((3, 3), bool)), (3, 3)), np.ones((3, 3), bool))
    with pytest.raises(ValueError):
        rle_to_mask([1, 2], (3, 3))
    square = polygon_mask([(2, 2), (6, 2), (6, 6), (2, 6)], (10, 10))
    assert square[4, 4] and not square[0, 0] and not square[8, 8]


def test_annotation_payload_round_trip_through_the_store(tmp_path):
    from core.session.store import Store, VersionRecord

    neg = np.zeros((16, 16), bool)
    neg[:4, :4] = True
    a = AttentionAnnotation.from_masks(7, 2, positives=[(8.0, 9.5)], negative=neg, seconds=5.2, operations=3,
                                       model_version=1)
    store = Store(tmp_path / "ws")
    wb = store.create_workbench("tiny", "seed-cnn", {}, base=VersionRecord(0, None, 0.0, "b", "x.pt"))
    store.add_annotations(wb.id, FEEDBACK.name, [FEEDBACK.to_payload(a)])
    (row,) = store.annotations(wb.id, FEEDBACK.name)
    back = FEEDBACK.from_payload(row.example_id, row.payload)
    assert back == a and np.array_equal(back.negative_mask(), neg)
    poly = AttentionAnnotation(3, 1, (16, 16), polygon=((2, 2), (12, 2), (12, 12)), mode="polygon")
    assert FEEDBACK.from_payload(*FEEDBACK.to_payload(poly)) == poly and poly.inside_mask().sum() > 20
    with pytest.raises(ValueError, match="mode"):
        AttentionAnnotation(1, 0, (4, 4), mode="lasso")


def test_every_feedback_kind_has_the_one_interface():
    assert set(kinds()) == {"latent", "selection", "attention", "grid"}
    for name, kind in kinds().items():
        assert isinstance(kind, FeedbackKind) and kind.name == name
    with pytest.raises(KeyError, match="known: latent, selection, attention, grid"):
        get_kind("grid-of-nothing")
    sel = get_kind("selection")
    s = sel.annotation_type(5, 1)
    assert sel.from_payload(*sel.to_payload(s)) == s
    assert FEEDBACK.describe([AttentionAnnotation(1, 0, (4, 4), positives=((1, 1),))]) == \
        "attention: 1 image (1 positive click)"


def test_barycentre_of_a_point_mass_is_its_pixel_centre():
    cams = torch.zeros(1, 10, 20)
    cams[0, 3, 15] = 2.0
    assert torch.allclose(cam_barycentre(cams), torch.tensor([[15.5 / 20, 3.5 / 10]]))


def _annotated(tiny_data, n=6, corner=True):
    ids = tiny_data.ids("train")[:n]
    anns = []
    for i in ids:
        neg = np.zeros((16, 16), bool)
        neg[:, 8:] = True  # "ignore the right half"
        anns.append(AttentionAnnotation.from_masks(int(i), int(tiny_data.labels[i]), positives=[(2.0, 2.0)] if corner else [],
                                                   negative=neg))
    return ids, anns


def test_guidance_alone_sends_gradients_to_the_backbone(tiny_data):
    """loss_pos + loss_neg, without any CE, reaches every conv layer's weights; a term built
    from detached maps (as in the published code) reaches none."""
    model = _model().train()
    ids, anns = _annotated(tiny_data)
    loss = FEEDBACK.loss_term(tiny_data, anns, AttentionSettings())
    batch = Batch(tiny_data.images[:2], tiny_data.labels[:2], torch.tensor([0, 1]), torch.zeros(2, 1), torch.zeros(2, 4))
    grads = _conv_grads(model, loss(model, batch))
    assert all(grads[f"conv{i}.weight"] > 0 for i in range(1, 5))
    pos, neg = loss.terms(model, create_graph=False)  # the published code's way: constants
    constant = (pos + neg).mean() * 0 + (pos + neg).mean().detach()
    assert not constant.requires_grad  # nothing to back-propagate: it cannot steer the model


def test_the_term_alone_changes_the_weights_in_a_fit(tiny_data):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, anns = _annotated(tiny_data)
    loss = FEEDBACK.loss_term(tiny_data, anns)
    fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=16, lr=0.01),
        loss_terms={"attention": loss}, weights={"cls": 0.0, "attention": 1.0})
    assert not torch.equal(before["conv1.weight"], model.state_dict()["conv1.weight"])


def test_a_few_steps_move_the_barycentre_to_the_click_and_mass_out_of_negatives(tiny_data):
    torch.manual_seed(0)
    model = _model().train()
    ids, anns = _annotated(tiny_data, n=4)
    loss = AttentionLoss(tiny_data.images[torch.as_tensor(ids)], anns)
    click = torch.tensor([2.0 / 16, 2.0 / 16])
    right = torch.zeros(16, 16)
    right[:, 8:] = 1

    def measure():
        out = gradcam(model, tiny_data.images[torch.as_tensor(ids)], loss.labels)
        dist = (cam_barycentre(out.cams) - click).norm(dim=1).mean().item()
        share = ((out.cams * right).sum((1, 2)) / out.cams.sum((1, 2)).clamp_min(1e-12)).mean().item()
        return dist, share

    d0, s0 = measure()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        pos, neg = loss.terms(model)
        (pos + neg).mean().backward()
        opt.step()
    d1, s1 = measure()
    assert d1 < 0.7 * d0, (d0, d1)
    assert s1 < 0.7 * s0, (s0, s1)


def test_attention_in_mask_share(tiny_data):
    model = _model().eval()
    x = tiny_data.images[:8]
    everywhere = torch.ones(8, 1, 16, 16)
    nowhere = torch.zeros(8, 1, 16, 16)
    full = attention_in_mask(model, x, everywhere)
    assert 0.99 <= full <= 1.0 or full == pytest.approx(0.0)  # all-zero maps count 0
    assert attention_in_mask(model, x, nowhere) == 0.0
