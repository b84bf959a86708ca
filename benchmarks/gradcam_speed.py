"""Grad-CAM speed: our batched Grad-CAM against pytorch-grad-cam (the library people use), on
the same model, layer, batch of images and target classes, with the same output: maps
upsampled to the image size and min-max normalised, as numpy on the CPU.

    python benchmarks/gradcam_speed.py [--models seed-cnn,vgg6,resnet18] [--batch 64] [--pairs 9] [--json PATH]

Each model is timed in interleaved pairs (ours, reference, ours, ...) after a warm-up; the
ratio is ours / reference (target <= 0.33, i.e. 3x faster). Models are at the image sizes of
the app's data: seed-cnn on 28x28x1, vgg6 and resnet18 on 32x32x3; random weights (speed does
not depend on them) and random images, fixed by ``--seed``.
"""
from __future__ import annotations

import argparse
import sys

import torch

from _common import interleaved, machine, print_table, write_json  # noqa: I001
from core.explain import gradcam, layer_of, normalize_cams
from core.models import build_model

SHAPES = {"seed-cnn": (1, 28), "vgg6": (3, 32), "resnet18": (3, 32)}
TARGET = 0.33


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="seed-cnn,vgg6,resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="3 pairs: a smoke test")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs = 3
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = torch.device(args.device)
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

        def theirs() -> None:
            reference(input_tensor=x, targets=ref_targets)

        timing = interleaved(ours, theirs, pairs=args.pairs, warmup=1)
        reference.__exit__(None, None, None)  # release its hooks
        rows.append({
            "name": f"gradcam_{arch}", "ours_s": timing["ours_s"], "reference_s": timing["reference_s"],
            "ratio": timing["ratio"], "target": TARGET, "pass": timing["ratio"] <= TARGET,
            "params": {"model": arch, "image": [c, s, s], "batch": args.batch, "pairs": args.pairs, "layer": model.gradcam_layer,
                       "reference": "pytorch-grad-cam 1.5.7 GradCAM (numpy maps, resized and normalised)",
                       "ours": "core.explain.gradcam + normalize_cams, to numpy", "seed": args.seed,
                       "quick": bool(args.quick), "ours_all": timing["ours_all"], "reference_all": timing["reference_all"],
                       **machine(str(device))},
        })
    print_table([{k: r[k] for k in ("name", "ours_s", "reference_s", "ratio", "target", "pass")} for r in rows],
                ["name", "ours_s", "reference_s", "ratio", "target", "pass"])
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
