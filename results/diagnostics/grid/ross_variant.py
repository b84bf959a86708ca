"""Diagnostic, not a product path: benchmarks/grid_feedback.py with the penalty's input gradient
taken as in Ross et al. 2017 ("right for the right reasons"), d(sum_k log p_k)/dx over all classes,
instead of the issue's d log p_y/dx. Everything else (lambda rule, share, per_step, the simulated
user, both baselines) is the benchmark's. Same arguments as the benchmark:

    python results/diagnostics/grid/ross_variant.py --data biased-digits:../shared/data/mnist --rho 0.997 \\
        --epochs 5 --review-k 10 --seeds 3 --seed-base 100 --cache CACHE --json PATH

Why: d log p_y/dx vanishes as p_y -> 1, so that penalty can be met by fitting the reviewed
images rather than by ignoring the marked squares; the sum over classes does not vanish there.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import core.feedback.grid.loss as grid  # noqa: E402


def all_class_gradients(model, images, targets, *, create_graph: bool = False) -> torch.Tensor:
    """d(sum_k log p_k)/dx (N, C, H, W); ``targets`` unused (kept for the same signature)."""
    x = images.detach().to(next(model.parameters()).device).requires_grad_(True)
    with torch.enable_grad():
        score = F.log_softmax(model(x), dim=1).sum()
        (g,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return g if create_graph else g.detach()


grid.input_gradients = all_class_gradients  # grid_penalty_values looks the name up at call time
sys.argv[0] = str(ROOT / "benchmarks" / "grid_feedback.py")
runpy.run_path(sys.argv[0], run_name="__main__")
