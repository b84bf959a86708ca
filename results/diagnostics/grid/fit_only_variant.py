"""Diagnostic, not a product path: benchmarks/grid_feedback.py with the grid penalty replaced by
the cross-entropy of the same reviewed images (the marks are ignored). Same lambda rule: lambda is
calibrated so that the term starts at ``--share`` x the reviewed images' CE, which for this term
makes lambda = share. Same per_step window, same simulated user choosing the same images.

    python results/diagnostics/grid/fit_only_variant.py --data biased-digits:../shared/data/mnist --rho 0.997 \\
        --epochs 5 --review-k 10 --seeds 3 --seed-base 100 --runs baseline,feedback --cache CACHE --json PATH

Why: d log p_y/dx vanishes as p_y -> 1, so the issue's penalty can be met by fitting the reviewed
mistakes wherever the squares are. If fitting them alone lifts the bias-conflicting accuracy as
much as the random-squares control does, the control's gain is the fit, not the squares.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import core.feedback.grid.loss as grid  # noqa: E402
from grid_feedback import reviewed_ce_values  # noqa: E402  (the benchmark's reviewed_ce control uses the same)

grid.grid_penalty_values = reviewed_ce_values  # GridPenalty looks the name up at call time
sys.argv[0] = str(ROOT / "benchmarks" / "grid_feedback.py")
runpy.run_path(sys.argv[0], run_name="__main__")
