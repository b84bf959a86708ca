"""core.monitor.embed: PCA / t-SNE layouts, the warm-started stream with trails, and the layer readers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.monitor.embed import EmbeddingStream, filter_vectors, layer_activations, pca_layout, tsne_layout
from core.models import build_model
from core.monitor.stats import watched_layers


def blobs(seed: int = 0, per: int = 40, dim: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs in ``dim``-D, ``per`` points each; returns (x, blob label)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim)) * 5
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centers])
    return x, np.repeat(np.arange(3), per)


def rms(p: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((p - p.mean(0)) ** 2, axis=1))))


# --- one-shot layouts ------------------------------------------------------------------------


def test_pca_layout_shape_sign_and_order():
    x, _ = blobs()
    a = pca_layout(x)
    assert a.shape == (120, 2) and a.dtype == np.float32
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_allclose(pca_layout(x[perm]), a[perm], atol=1e-4)
    # PCA of -x has the same components up to sign; the sign rule makes the layout flip with x
    np.testing.assert_allclose(pca_layout(-x), -a, atol=1e-4)
    assert a[:, 0].var() >= a[:, 1].var()


def test_tsne_layout_separates_blobs_and_is_deterministic():
    x, lab = blobs()
    a = tsne_layout(x, seed=0)
    assert a.shape == (120, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, tsne_layout(x, seed=0))
    # each point's nearest 2D neighbour is in its own blob
    d = np.linalg.norm(a[:, None] - a[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (lab[d.argmin(1)] == lab).mean() > 0.95
    b = tsne_layout(x, seed=0, init=pca_layout(x) * 100)
    assert b.shape == (120, 2) and np.isfinite(b).all()
    np.testing.assert_array_equal(tsne_layout(x, seed=0, init=np.ones((120, 2))), a)  # no spread: ignored


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 12])
def test_tiny_inputs_do_not_crash(n):
    x, _ = blobs()
    assert tsne_layout(x[:n], perplexity=30).shape == (n, 2)
    assert pca_layout(x[:n]).shape == (n, 2)
    for method in ("tsne", "pca"):
        s = EmbeddingStream(method)
        for _ in range(2):
            out = s.update(x[:n], list(range(n)))
            assert out.shape == (n, 2) and np.isfinite(out).all()
        assert s.trails().shape[0] == n


def test_degenerate_data_does_not_crash():
    x = np.ones((20, 3))
    assert np.isfinite(pca_layout(x)).all()
    s = EmbeddingStream()
    s.update(x, range(20))
    assert np.isfinite(s.update(x, range(20))).all()
    assert np.isfinite(pca_layout(np.arange(10.0)[:, None])).all()  # one feature


# --- the stream -----------------------------------------------------------------------------


def test_warm_update_of_unchanged_data_moves_less_than_a_cold_start():
    x, _ = blobs()
    ids = np.arange(len(x))
    s = EmbeddingStream(seed=0)
    first = s.update(x, ids)
    assert s.last_displacement is None
    second = s.update(x, ids)
    warm = np.linalg.norm(second - first, axis=1).mean() / rms(second)
    assert s.last_displacement == pytest.approx(warm, rel=1e-4)
    cold_layout = EmbeddingStream(seed=1).update(x, ids)
    cold = np.linalg.norm(cold_layout - first, axis=1).mean() / rms(cold_layout)
    assert warm < 0.5 * cold, (warm, cold)
    assert warm < 0.05
    # the warm layout keeps the previous scale (openTSNE's init rescaling would shrink it 1e5-fold)
    assert rms(second) == pytest.approx(rms(first), rel=1e-3)


def test_warm_update_follows_changed_data():
    x, lab = blobs()
    ids = np.arange(len(x))
    s = EmbeddingStream(seed=0)
    s.update(x, ids)
    # move blob 0 onto blob 1 in feature space: the layout must merge them
    x2 = x.copy()
    x2[lab == 0] += x[lab == 1].mean(0) - x[lab == 0].mean(0)
    out = s.update(x2, ids)
    for _ in range(3):
        out = s.update(x2, ids)
    c = [out[lab == k].mean(0) for k in range(3)]
    assert np.linalg.norm(c[0] - c[1]) < 0.5 * np.linalg.norm(c[0] - c[2])


def test_trails_hold_exactly_the_last_positions():
    x, _ = blobs()
    rng = np.random.default_rng(0)
    s = EmbeddingStream(seed=0, trail=3, warm_iter=20)
    ids = list(range(100))
    outs = [s.update(x[:100], ids)]
    assert s.trails().shape == (100, 1, 2)
    assert s.updates == 1
    for _ in range(3):
        outs.append(s.update(x[:100] + 0.3 * rng.normal(size=(100, 10)), ids))
    tr = s.trails()
    assert tr.shape == (100, 3, 2)
    np.testing.assert_array_equal(tr, np.stack(outs[-3:], axis=1))
    np.testing.assert_array_equal(s.layout, outs[-1])
    steps = np.linalg.norm(np.diff(tr.astype(np.float64), axis=1), axis=2).sum(1)
    assert (steps > 0).all()  # every point moved along its trail

    # a new id (and one that returns after missing an update) starts a fresh, padded trail;
    # rows come back in the order of the ids given
    new_ids = [120, *range(99, -1, -1)]
    out = s.update(np.concatenate([x[[100]], x[99::-1]]), new_ids)
    np.testing.assert_array_equal(s.ids, new_ids)
    tr = s.trails()
    assert tr.shape == (101, 3, 2)
    np.testing.assert_array_equal(tr[0], np.repeat(out[[0]], 3, axis=0))
    np.testing.assert_array_equal(tr[1:, -1], out[1:])
    np.testing.assert_array_equal(tr[1:, :2], np.stack(outs[-2:], axis=1)[::-1])
    assert (np.diff(tr[0], axis=0) == 0).all()  # the new id has not moved yet


def test_stream_is_deterministic_under_a_seed():
    x, _ = blobs()
    rng = np.random.default_rng(3)
    x2 = x + 0.2 * rng.normal(size=x.shape)
    runs = []
    for seed in (0, 0, 1):
        s = EmbeddingStream(seed=seed, warm_iter=30)
        s.update(x[:100], range(100))
        runs.append(s.update(x2, range(120)))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_new_ids_start_at_their_nearest_neighbour():
    x, lab = blobs()
    new = np.array([5, 45, 85, 119])  # one or two per blob
    old = np.setdiff1d(np.arange(120), new)
    # one iteration: the positions are (almost) the initial ones
    s = EmbeddingStream(seed=0, warm_iter=1)
    base = s.update(x[old], old)
    out = s.update(x, np.arange(120))
    for i in new:
        d = np.linalg.norm(x[old] - x[i], axis=1)
        nn_pos = base[d.argmin()]
        assert np.linalg.norm(out[i] - nn_pos) < 0.02 * rms(base)
    # after a normal warm update each new point sits among its own blob
    s = EmbeddingStream(seed=0)
    s.update(x[old], old)
    out = s.update(x, np.arange(120))
    d2 = np.linalg.norm(out[new][:, None] - out[old][None], axis=2)
    assert (lab[old][d2.argmin(1)] == lab[new]).all()


def test_mostly_new_ids_start_cold():
    x, _ = blobs()
    s = EmbeddingStream(seed=0)
    s.update(x[:10], range(10))
    np.testing.assert_array_equal(s.update(x, range(120)), tsne_layout(x, seed=0))
    assert s.last_displacement is not None  # the 10 shared points still have a displacement


def test_pca_stream_keeps_signs():
    x, _ = blobs()
    s = EmbeddingStream("pca")
    a = s.update(x, range(120))
    np.testing.assert_allclose(a, pca_layout(x))
    b = s.update(-x, range(120))  # a plain PCA layout of -x is -a
    np.testing.assert_allclose(b, a, atol=1e-4)
    assert s.last_displacement == pytest.approx(0, abs=1e-4)
    assert s.trails().shape == (120, 2, 2)


def test_reset_starts_cold():
    x, _ = blobs()
    s = EmbeddingStream(seed=0)
    a = s.update(x, range(120))
    s.update(x + 1, range(120))
    s.reset()
    assert s.layout is None and s.updates == 0 and len(s.ids) == 0 and s.last_displacement is None
    assert s.trails().shape == (0, 0, 2)
    np.testing.assert_array_equal(s.update(x, range(120)), a)


def test_bad_inputs_have_clear_messages():
    x, _ = blobs()
    s = EmbeddingStream()
    with pytest.raises(ValueError, match="2-D"):
        s.update(x[0], range(10))
    with pytest.raises(ValueError, match="2-D"):
        tsne_layout(x[0])
    with pytest.raises(ValueError, match=r"len\(ids\)"):
        s.update(x, range(119))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        s.update(bad, range(120))
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        pca_layout(bad)
    with pytest.raises(ValueError, match="unique"):
        s.update(x[:3], [1, 1, 2])
    with pytest.raises(ValueError, match="Unknown method"):
        EmbeddingStream("umap")
    with pytest.raises(ValueError, match="init must have shape"):
        tsne_layout(x, init=np.zeros((3, 2)))
    assert s.updates == 0 and s.layout is None  # failed updates leave the stream alone


# --- layer readers --------------------------------------------------------------------------


@pytest.fixture
def cnn():
    return build_model("seed-cnn", 1, 16, 4, seed=0)


def test_filter_vectors_are_the_flattened_weights(cnn):
    for name, module in watched_layers(cnn).items():
        v = filter_vectors(cnn, name)
        w = module.weight.detach()
        assert v.shape == (w.shape[0], w[0].numel()) and v.dtype == np.float32
        np.testing.assert_array_equal(v, w.reshape(w.shape[0], -1).numpy())
    assert filter_vectors(cnn, "conv2").shape == (32, 32 * 3 * 3)
    with pytest.raises(ValueError, match="Conv2d or Linear"):
        filter_vectors(cnn, "pool")
    with pytest.raises(ValueError, match="Unknown layer"):
        filter_vectors(cnn, "conv9")


def test_layer_activations_match_a_direct_computation(cnn, tiny_data):
    images, _ = tiny_data.split("train")
    cnn.train()
    cnn.conv1.eval()  # a mixed state must come back as it was
    got_c2 = layer_activations(cnn, "conv2", images, batch_size=7)
    got_fc2 = layer_activations(cnn, "fc2", images)
    with torch.no_grad():
        want_c2 = cnn.conv2(cnn.relu(cnn.conv1(images))).mean(dim=(2, 3)).numpy()
        flat = torch.flatten(cnn._conv_body(images), 1)
        want_fc2 = cnn.fc2(cnn.relu(cnn.fc1(flat))).numpy()
    assert got_c2.shape == (len(images), 32) and got_c2.dtype == np.float32
    np.testing.assert_allclose(got_c2, want_c2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_fc2, want_fc2, rtol=1e-5, atol=1e-5)
    assert cnn.training and not cnn.conv1.training and cnn.conv2.training
    assert all(not m._forward_hooks for m in cnn.modules())
    assert layer_activations(cnn, "fc1", images[:0]).shape == (0, 128)
    with pytest.raises(ValueError, match="Unknown layer"):
        layer_activations(cnn, "nope", images)


def test_layer_activations_use_eval_mode(tiny_data):
    images = tiny_data.split("train")[0][:16]
    vgg = build_model("vgg6", 1, 16, 4, seed=0)
    vgg.train()
    running = vgg.bn1.running_mean.clone()
    one = layer_activations(vgg, "conv3", images, batch_size=1)
    many = layer_activations(vgg, "conv3", images, batch_size=64)
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-5)  # BatchNorm used its running stats
    torch.testing.assert_close(vgg.bn1.running_mean, running)  # and did not update them
    assert all(m.training for m in vgg.modules())


def test_progress_reports_how_far_a_layout_is_and_changes_nothing():
    x, _ = blobs()
    ids = np.arange(len(x))
    calls: list[tuple[float, str]] = []
    with_progress = EmbeddingStream("tsne", seed=1)
    first = with_progress.update(x, ids, progress=lambda f, t: calls.append((f, t)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert "neighbours" in calls[0][1] and any("iteration 375 of 750" in t for _, t in calls)
    assert len(calls) >= 30  # every 25 of the 250 + 500 iterations
    plain = EmbeddingStream("tsne", seed=1)
    np.testing.assert_array_equal(first, plain.update(x, ids))  # reporting does not change the layout
    calls.clear()
    warm = with_progress.update(x + 0.01, ids, progress=lambda f, t: calls.append((f, t)))
    assert [f for f, _ in calls][-1] == 1.0 and "from the last layout" in calls[-1][1]
    np.testing.assert_array_equal(warm, plain.update(x + 0.01, ids))
    calls.clear()
    EmbeddingStream("pca").update(x, ids, progress=lambda f, t: calls.append((f, t)))
    assert calls == [(1.0, f"PCA of {len(x)} points: done")]
