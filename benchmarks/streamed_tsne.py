"""Streamed t-SNE: a warm update of core.embed.EmbeddingStream against a cold scikit-learn TSNE.

The points are real activations: a seed-cnn is trained for one epoch on the data, and the
128-D outputs of its ``fc1`` layer (``--layer``) for ``--points`` images drawn from all splits
are snapshot A. Snapshot B is the same images after one more SGD step of the model (what the
training monitor sees between two refreshes). The stream was updated once on A (cold,
untimed); what is timed is its update on B (warm start, ``warm_iter`` = 100 iterations, no
early exaggeration). The reference is what a user would otherwise run on B: a cold
``sklearn.manifold.TSNE`` with the same perplexity (30), PCA initialisation and seed.
Both run on one thread (openTSNE ``n_jobs=1``; scikit-learn's OpenMP and BLAS pools limited
to 1 with threadpoolctl). Default data: ``../shared/data/quickdraw`` (7 classes, 600 drawings
each) when present, else the bundled ``digits`` (about 1,800 images, so fewer points).

Also reported: how far a warm update of unchanged data (A again) moves the points, against a
cold layout of A with another seed (mean distance / RMS radius of the new layout), and the
trustworthiness (10 neighbours) of both timed layouts of B, so speed is not bought with quality.

    python benchmarks/streamed_tsne.py [--data PATH|NAME] [--points 2000] [--pairs 5] [--seed 0] [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE, trustworthiness
from threadpoolctl import threadpool_limits

from _common import ROOT, interleaved, machine, print_table, write_json  # noqa: I001
from core.data import load_dataset
from core.embed import EmbeddingStream, layer_activations, tsne_layout
from core.engine import TrainConfig, fit
from core.models import build_model

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "quickdraw"
TARGET = 0.25
PERPLEXITY = 30.0


def rms_radius(p: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((p - p.mean(0)) ** 2, axis=1))))


def snapshots(data, layer: str, points: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Activations of ``layer`` for ``points`` images after one epoch of training (A) and
    after one more SGD step (B)."""
    c, h, _ = data.image_shape
    model = build_model("seed-cnn", c, h, data.num_classes, seed=seed)
    train = data.split("train")
    t0 = time.perf_counter()
    fit(model, train, None, config=TrainConfig(epochs=1, lr=0.02, seed=seed, device="cpu"))
    train_s = time.perf_counter() - t0
    images = torch.cat([data.split(s)[0] for s in ("train", "val", "test", "pool")])
    pick = np.sort(np.random.default_rng(seed).permutation(len(images))[: min(points, len(images))])
    images = images[torch.as_tensor(pick)]
    a = layer_activations(model, layer, images)
    # one more training step, as between two refreshes of the monitor
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(train[0]), generator=g)[:64]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(train[0][idx]), train[1][idx]).backward()
    opt.step()
    b = layer_activations(model, layer, images)
    info = {"train_images": len(train[0]), "train_s": round(train_s, 2), "feature_dim": a.shape[1],
            "step_change": float(np.linalg.norm(b - a) / np.linalg.norm(a))}
    return a, b, info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None,
                    help="dataset source (default: ../shared/data/quickdraw if present, else digits)")
    ap.add_argument("--limit-per-class", type=int, default=600, help="images per class read from folder sources")
    ap.add_argument("--layer", default="fc1", help="seed-cnn layer whose activations are laid out")
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--warm-iter", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small run for CI (500 points, 3 pairs)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.quick:
        args.points, args.pairs, args.limit_per_class = 500, 3, 100
    source = args.data or (str(DEFAULT_DATA) if DEFAULT_DATA.exists() else "digits")
    limit = None if source == "digits" else args.limit_per_class

    data = load_dataset(source, seed=args.seed, limit_per_class=limit)
    x_a, x_b, info = snapshots(data, args.layer, args.points, args.seed)
    n = len(x_a)
    ids = np.arange(n)

    with threadpool_limits(limits=1):
        primed = EmbeddingStream("tsne", perplexity=PERPLEXITY, seed=args.seed, warm_iter=args.warm_iter)
        first = primed.update(x_a, ids)  # the previous snapshot's layout (cold, untimed)

        # how far points move: warm update of unchanged data vs a cold layout with another seed
        again = copy.deepcopy(primed)
        again.update(x_a, ids)
        disp_warm = float(again.last_displacement)
        cold = tsne_layout(x_a, perplexity=PERPLEXITY, seed=args.seed + 1, n_iter=primed.cold_iter)
        disp_cold = float(np.linalg.norm(cold - first, axis=1).mean() / rms_radius(cold))

        warmup = 1
        streams = [copy.deepcopy(primed) for _ in range(args.pairs + warmup)]
        out: dict[str, np.ndarray] = {}
        step_disp: list[float] = []

        def ours() -> None:
            s = streams.pop()
            out["ours"] = s.update(x_b, ids)
            step_disp.append(float(s.last_displacement))

        def reference() -> None:
            out["reference"] = TSNE(n_components=2, perplexity=PERPLEXITY, init="pca", learning_rate="auto",
                                    random_state=args.seed, n_jobs=1).fit_transform(x_b)

        r = interleaved(ours, reference, pairs=args.pairs, warmup=warmup)
        trust_ours = float(trustworthiness(x_b, out["ours"], n_neighbors=10))
        trust_ref = float(trustworthiness(x_b, out["reference"], n_neighbors=10))

    result = {
        "name": "streamed_tsne",
        "ours_s": r["ours_s"],
        "reference_s": r["reference_s"],
        "ratio": r["ratio"],
        "target": TARGET,
        "pass": r["ratio"] <= TARGET,
        "mean_displacement_warm": disp_warm,
        "mean_displacement_cold": disp_cold,
        "mean_displacement_warm_step": float(np.median(step_disp)),
        "trustworthiness_ours": trust_ours,
        "trustworthiness_reference": trust_ref,
        "ours_all": r["ours_all"],
        "reference_all": r["reference_all"],
        "params": {"data": source, "limit_per_class": limit, "model": "seed-cnn", "layer": args.layer,
                   "points": n, "perplexity": PERPLEXITY, "warm_iter": args.warm_iter,
                   "reference": "sklearn.manifold.TSNE(init='pca', learning_rate='auto') cold",
                   "threads": 1, "pairs": args.pairs, "seed": args.seed, **info, **machine()},
    }
    print_table([result], ["name", "ours_s", "reference_s", "mean_displacement_warm", "mean_displacement_cold",
                           "trustworthiness_ours", "trustworthiness_reference", "target", "pass", "ratio"])
    write_json(args.json, result)
    print(f"ratio {result['ratio']:.3f} (target <= {TARGET})")
    return result


if __name__ == "__main__":
    main()
