"""Grad-CAM speed: our batched Grad-CAM against pytorch-grad-cam (the library people use), on
the same model, layer, batch of images and target classes, with the same output: maps
upsampled to the image size and min-max normalised, as numpy on the CPU.

    python benchmarks/gradcam_speed.py [--models seed-cnn,vgg6,resnet18] [--batch 64] [--pairs 9]
                                       [--device cpu|cuda] [--json PATH]

Each model is timed in interleaved pairs (ours, reference, ours, ...) after a warm-up; the
ratio is ours / reference (target <= 0.33, i.e. 3x faster). ``floor_ratio``: the model's
forward pass alone, without autograd, against the same reference, timed the same way. No
Grad-CAM can cost less than the forward pass it explains, so no ratio can go below this one
by more than the timing's noise (ours skips autograd below the Grad-CAM layer, so on a deep
model such as resnet18 it costs about one forward pass). Models are at the image sizes of
the app's data: seed-cnn on 28x28x1, vgg6 and resnet18 on 32x32x3; random weights (speed
does not depend on them) and random images, fixed by ``--seed``.

``--device cuda``: the model, the images and both Grad-CAMs run on the GPU (pytorch-grad-cam
on the same model, on the same device), each timed call ending with a CUDA sync; the times are
absolute seconds on the GPU named in the JSON, next to the ratios. The GMM entry's mixture fit
and ranking are scikit-learn and stay on the CPU (as in the app); its pool stays in host
memory and goes to the GPU batch by batch, in both of its sides. On a machine without the
device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import sys

import torch

from _common import device_or_exit, device_params, interleaved, machine, print_table, sync, write_json  # noqa: I001
from core.explain import gradcam, layer_of, normalize_cams
from core.models import build_model

SHAPES = {"seed-cnn": (1, 28), "vgg6": (3, 32), "resnet18": (3, 32)}
TARGET = 0.33


POOL_TARGET = 1.5
POOL_NOTE = ("Grad-CAMs and probabilities on the device; the mixture's fit and ranking (scikit-learn) on the CPU, "
             "as in the app")


def pool_scoring(args, device: torch.device) -> dict:
    """Scoring a pool with the GMM sampler (Grad-CAMs and probabilities for every image, then
    the mixture's fit and ranking) against one forward+backward pass over the same pool."""
    import numpy as np
    import torch.nn.functional as F

    from core.feedback.attention.workflow import pool_view
    from core.select import get_sampler

    g = torch.Generator().manual_seed(args.seed)
    model = build_model("seed-cnn", 3, 28, 10, seed=args.seed).to(device).eval()
    x = torch.rand(args.pool, 3, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.pool,), generator=g)
    ids = np.arange(args.pool)
    gmm = get_sampler("gmm")

    def ours() -> None:
        gmm.rank(pool_view(model, x, ids, gmm.needs, batch_size=256), k=64)
        sync(str(device))

    def reference() -> None:
        for start in range(0, args.pool, 256):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[start:start + 256].to(device)), y[start:start + 256].to(device)).backward()
        model.zero_grad(set_to_none=True)
        sync(str(device))

    timing = interleaved(ours, reference, pairs=max(3, args.pairs // 2), warmup=1)
    prov = machine(str(device))
    return {"name": "gmm_pool_scoring", "ours_s": timing["ours_s"], "reference_s": timing["reference_s"],
            "ratio": timing["ratio"], "target": POOL_TARGET, "pass": timing["ratio"] <= POOL_TARGET,
            "params": {"model": "seed-cnn", "pool": args.pool, "batch": 256, "picks": 64,
                       "reference": "one forward+backward pass over the pool (CE, parameter gradients), batches of 256",
                       "quick": bool(args.quick), **prov, **device_params(str(device), POOL_NOTE)},
            "provenance": prov}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="seed-cnn,vgg6,resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda: where the model, images and both Grad-CAMs run (on a machine without it: "
                         "says so, exits 0)")
    ap.add_argument("--pool", type=int, default=10_000, help="pool size for the GMM scoring entry")
    ap.add_argument("--no-pool", action="store_true", help="leave out the GMM pool-scoring entry")
    ap.add_argument("--quick", action="store_true", help="3 pairs and a pool of 1,000: a smoke test")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(device_or_exit(args.device))  # before anything is imported or built
    if args.quick:
        args.pairs, args.pool = 3, 1000
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    prov = machine(str(device))
    rows = []
    for arch in args.models.split(","):
        c, s = SHAPES[arch]
        g = torch.Generator().manual_seed(args.seed)
        model = build_model(arch, c, s, 10, seed=args.seed).to(device).eval()
        x = torch.rand(args.batch, c, s, s, generator=g).to(device)
        targets = torch.randint(0, 10, (args.batch,), generator=g)
        reference = GradCAM(model=model, target_layers=[layer_of(model)])
        ref_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def ours() -> None:
            normalize_cams(gradcam(model, x, targets).cams).cpu().numpy()
            sync(str(device))

        def theirs() -> None:
            reference(input_tensor=x, targets=ref_targets)  # returns numpy maps: on the CPU, like ours
            sync(str(device))

        def forward_only() -> None:
            # the floor under any Grad-CAM: the forward pass it cannot skip, without autograd
            with torch.no_grad():
                model(x)
            sync(str(device))

        timing = interleaved(ours, theirs, pairs=args.pairs, warmup=1)
        floor = interleaved(forward_only, theirs, pairs=args.pairs, warmup=1)
        reference.__exit__(None, None, None)  # release its hooks
        rows.append({
            "name": f"gradcam_{arch}", "ours_s": timing["ours_s"], "reference_s": timing["reference_s"],
            "ratio": timing["ratio"], "target": TARGET, "pass": timing["ratio"] <= TARGET,
            "forward_s": floor["ours_s"], "floor_ratio": floor["ratio"],
            "params": {"model": arch, "image": [c, s, s], "batch": args.batch, "pairs": args.pairs, "layer": model.gradcam_layer,
                       "reference": "pytorch-grad-cam 1.5.7 GradCAM (numpy maps, resized and normalised)",
                       "ours": "core.explain.gradcam + normalize_cams, to numpy", "seed": args.seed,
                       "quick": bool(args.quick), "ours_all": timing["ours_all"], "reference_all": timing["reference_all"],
                       **prov, **device_params(str(device))},
            "provenance": prov,  # not write_json's default, which names the device torch would pick
        })
    if not args.no_pool:
        rows.append(pool_scoring(args, device))
    print_table([{k: r[k] for k in ("name", "ours_s", "reference_s", "ratio", "target", "pass")} for r in rows],
                ["name", "ours_s", "reference_s", "ratio", "target", "pass"])
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
