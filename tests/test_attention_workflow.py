"""The attention workflow without UI: pool scoring for each sampler, the simulated user's
clicks, fine-tuning with and without guidance, the bias report, and the benchmark's --quick."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from core.feedback.attention.workflow import (
    FINE_TUNE,
    FineTuneSettings,
    annotate_like_a_person,
    bias_report,
    fine_tune,
    fine_tune_plan,
    pool_view,
    select_candidates,
    simulated_annotation,
    without_masks,
)
from core.engine import TrainConfig, fit
from core.explain.gradcam import gradcam
from core.models import build_model
from support import benchmark


def _model(data):
    c, h, _ = data.image_shape
    return build_model("seed-cnn", c, h, data.num_classes, seed=0)


def test_pool_view_computes_what_the_sampler_needs(tiny_data):
    model = _model(tiny_data).train()
    ids = tiny_data.ids("pool")
    x = tiny_data.images[torch.as_tensor(ids)]
    v = pool_view(model, x, ids, {"cams", "features"})
    assert v.probs.shape == (len(ids), 4) and np.allclose(v.probs.sum(1), 1, atol=1e-5)
    assert v.cams.shape[0] == len(ids) and v.features.shape == (len(ids), model.feature_dim)
    assert model.training  # mode put back
    bare = pool_view(model, x, ids, set())
    assert bare.cams is None and bare.features is None


@pytest.mark.parametrize("sampler", ["random", "entropy", "margin", "kcenter", "gmm"])
def test_select_candidates_never_offers_annotated_ids(tiny_data, sampler):
    model = _model(tiny_data)
    pool = tiny_data.ids("pool").tolist()
    exclude = pool[:3]
    picked = select_candidates(model, tiny_data, sampler, 5, exclude=exclude, seed=1)
    assert len(picked) == min(5, len(pool) - 3) and len(set(picked.tolist())) == len(picked)
    assert not set(picked.tolist()) & set(exclude) and set(picked.tolist()) <= set(pool)
    assert picked.tolist() == select_candidates(model, tiny_data, sampler, 5, exclude=exclude, seed=1).tolist()


def test_simulated_user_clicks_the_object_and_the_attended_background():
    image = torch.zeros(1, 16, 16)
    image[0, 4:12, 6:10] = 1.0  # the object: a bright bar
    mask = image[0].numpy() > 0.5
    segments = np.zeros((16, 16), np.int32)
    segments[:, 8:] = 1  # two halves; the object straddles both
    segments[:4, :] = 2  # top strip: background only
    segments[12:, :] = 3  # bottom strip: background only
    cam = np.zeros((16, 16))
    cam[:4, :] = 1.0  # the model looks at the top strip
    ann = simulated_annotation(7, 3, image, mask, cam, segments=segments)
    assert ann.positives == ((8.0, 8.0),)  # the mask's centroid, pixel centres at +0.5
    neg = ann.negative_mask()
    assert neg[:4].all() and not neg[4:].any()  # only the attended background segment
    assert ann.operations == 2 and ann.label == 3
    quiet = simulated_annotation(7, 3, image, mask, np.zeros((16, 16)), segments=segments)
    assert not quiet.negative  # nothing above the mean: no negative click


def test_annotate_needs_masks_and_skips_nothing_silently(tiny_data):
    model = _model(tiny_data)
    ids = tiny_data.ids("pool")[:4]
    anns = annotate_like_a_person(model, tiny_data, ids)
    assert [a.example_id for a in anns] == ids.tolist() and all(a.positives for a in anns)
    tiny_data.has_mask = np.ones(len(tiny_data.images), bool)
    tiny_data.has_mask[ids[0]] = False
    assert without_masks(tiny_data).tolist() == [ids[0]]
    with pytest.raises(ValueError, match="no object mask"):
        annotate_like_a_person(model, tiny_data, ids)
    tiny_data.masks, tiny_data.has_mask = None, None
    with pytest.raises(ValueError, match="no object masks"):
        annotate_like_a_person(model, tiny_data, ids[1:])


def test_fine_tune_with_and_without_guidance_takes_the_same_steps(tiny_data):
    base = _model(tiny_data)
    anns = annotate_like_a_person(base, tiny_data, tiny_data.ids("pool")[:6])
    st = FineTuneSettings(dataclasses.replace(FINE_TUNE, epochs=2, batch_size=4))
    ours, other = _model(tiny_data), _model(tiny_data)
    r1 = fine_tune(ours, tiny_data, anns, st)
    r2 = fine_tune(other, tiny_data, anns, st, guidance=False)
    assert r1.steps == r2.steps == 2 * 2 and r1.status == r2.status == "done"
    assert not torch.equal(ours.conv1.weight, other.conv1.weight)  # the guidance term changed the training
    plan = fine_tune_plan(tiny_data, anns, st)
    assert plan["weights"] == {"cls": 0.25, "attention": 0.75}
    with pytest.raises(ValueError, match="at least one annotation"):
        fine_tune_plan(tiny_data, [], st)


def _percent_correct(model, x, y):
    with torch.no_grad():
        return 100 * float((model(x).argmax(1) == y).float().mean())


def _percent_cam_in_mask(model, x, masks, y):
    """Mean share of each image's true-class Grad-CAM mass inside its mask, by hand."""
    cams = gradcam(model, x, y).cams
    mass = cams.sum(dim=(1, 2))
    inside = (cams * masks[:, 0]).sum(dim=(1, 2))
    return 100 * float(torch.where(mass > 0, inside / mass.clamp_min(1e-12), torch.zeros_like(mass)).mean())


def test_bias_report(tiny_data):
    """The report's figures are the model's own: accuracy on the test split (here with half its
    labels changed, so it differs from every other split), on test_aligned when the data has
    it, and the Grad-CAM mass inside the masks of the test rows that have a real mask."""
    model = _model(tiny_data)
    fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=4, batch_size=16, lr=0.05))
    test = np.asarray(tiny_data.ids("test"))
    labels = tiny_data.labels.clone()
    labels[test[::2]] = (labels[test[::2]] + 1) % tiny_data.num_classes
    has = np.ones(len(labels), bool)
    has[test[1::3]] = False  # rows without a mask: their all-zero mask must not count as "no attention inside"
    masks = tiny_data.masks.clone()
    masks[test[1::3]] = 0
    data = dataclasses.replace(tiny_data, labels=labels, masks=masks, has_mask=has,
                               splits={**tiny_data.splits, "test_aligned": tiny_data.ids("val")})
    model.train()
    rep = bias_report(model, data)
    assert model.training  # mode put back
    model.eval()
    t, v = torch.as_tensor(test), torch.as_tensor(data.ids("val"))
    assert rep["test_acc"] == pytest.approx(_percent_correct(model, data.images[t], labels[t]))
    assert 25 < rep["test_acc"] < 75  # the changed labels: not the accuracy of any other split
    assert rep["aligned_acc"] == pytest.approx(_percent_correct(model, data.images[v], labels[v])) and rep["aligned_acc"] > 90
    rows = torch.as_tensor(test[has[test]])
    want = _percent_cam_in_mask(model, data.images[rows], masks[rows], labels[rows])
    assert rep["attention_in_mask"] == pytest.approx(want, rel=1e-4)
    assert want != pytest.approx(_percent_cam_in_mask(model, data.images[t], masks[t], labels[t]), rel=1e-3)

    bare = bias_report(model, dataclasses.replace(tiny_data, masks=None, has_mask=None))
    x, y = tiny_data.split("test")
    assert bare["test_acc"] == pytest.approx(_percent_correct(model, x, y))
    assert bare["aligned_acc"] is None and bare["attention_in_mask"] is None


@pytest.mark.slow
def test_benchmark_quick_runs_and_writes_its_json(tmp_path):
    attention_guidance = benchmark("attention_guidance")

    out = tmp_path / "attention.json"
    payload = attention_guidance.main(["--data", "biased-digits", "--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["quick"] and set(saved["arms"]) == set(payload["arms"]) == set(attention_guidance.ARMS)
    effect = saved["effect"]
    assert effect["arm"] == attention_guidance.HEADLINE and effect["seeds"] == [0]
    row = saved["per_seed"][0]
    # the effect's figures are the per-seed arms', not typed: ours is the headline arm, etc.
    assert effect["ours"] == row["arms"][attention_guidance.HEADLINE]["test_acc"]
    assert effect["same_information"] == row["arms"]["same_information"]["test_acc"]
    assert effect["random_region"] == row["arms"][f"{attention_guidance.HEADLINE}_random"]["test_acc"]
    assert effect["before"] == row["before"]["test_acc"] and effect["oracle"] == row["oracle"] is not None
    assert effect["per_seed"] == [{"seed": 0, **{k: effect[k] for k in
                                             ("before", "ours", "same_information", "random_region", "oracle")}}]
    gain = effect["gain_over_same_information"]
    assert gain["mean"] == pytest.approx(effect["ours"] - effect["same_information"]) and gain["seeds"] == 1
    assert effect["gain_over_random_region"]["mean"] == pytest.approx(effect["ours"] - effect["random_region"])
    if effect["oracle"] > effect["before"]:
        want = (effect["ours"] - effect["before"]) / (effect["oracle"] - effect["before"])
        assert effect["gap_closed"] == pytest.approx(want)
    # the baseline fine-tunes at its own tuned lr, recorded beside ours; same epochs for every arm
    assert saved["params"]["lr"]["same_information"] == attention_guidance.LR["same_information"]
    assert saved["params"]["lr"]["counterexamples"] == attention_guidance.LR["counterexamples"]
    assert saved["seeds"]["tuned_on"] == attention_guidance.TUNED_ON and saved["provenance"]["git_commit"]


def test_random_regions_have_as_many_pixels_as_the_marks(tiny_data):
    attention_guidance = benchmark("attention_guidance")

    ids = [int(i) for i in np.asarray(tiny_data.ids("pool"))[:4]]
    anns = attention_guidance.annotate_oracle(tiny_data, ids)
    rand = attention_guidance.randomised(tiny_data, anns, seed=0)
    for a, r in zip(anns, rand):
        want, got = a.negative_mask().sum(), r.negative_mask().sum()
        assert got == want and a.positives == r.positives  # as many pixels, not more
        assert not np.array_equal(a.negative_mask(), r.negative_mask())
    assert [r.negative for r in rand] == [r.negative for r in attention_guidance.randomised(tiny_data, anns, seed=0)]


def test_oracle_user_marks_every_pixel_off_the_object(tiny_data):
    attention_guidance = benchmark("attention_guidance")

    ids = [int(i) for i in np.asarray(tiny_data.ids("pool"))[:3]]
    anns = attention_guidance.annotate_oracle(tiny_data, ids)
    for a, i in zip(anns, ids):
        mask = tiny_data.masks[i, 0].numpy() > 0
        assert a.example_id == i and a.label == int(tiny_data.labels[i])
        np.testing.assert_array_equal(a.negative_mask(), ~mask)
        ys, xs = np.nonzero(mask)
        assert a.positives == ((xs.mean() + 0.5, ys.mean() + 0.5),)


@pytest.mark.slow
def test_benchmark_diagnostics_record_the_user_and_layer(tmp_path):
    attention_guidance = benchmark("attention_guidance")

    out = tmp_path / "oracle.json"
    attention_guidance.main(["--data", "biased-digits", "--quick", "--sampler", "random", "--user", "oracle",
                             "--arms", "same_information,loss", "--no-oracle", "--gradcam-layer", "conv2",
                             "--w-g", "0.5", "--w-c", "0.5", "--json", str(out)])
    saved = json.loads(out.read_text())
    params = saved["params"]
    assert params["user"] == "oracle" and params["gradcam_layer"] == "conv2" and params["arms"] == ["same_information", "loss"]
    assert params["w_g"] == 0.5 and params["w_c"] == 0.5
    assert saved["effect"]["arm"] == "loss" and saved["effect"]["random_region"] is None and saved["effect"]["oracle"] is None
    with pytest.raises(SystemExit, match="no such layer"):
        attention_guidance.main(["--data", "biased-digits", "--quick", "--gradcam-layer", "conv9"])
