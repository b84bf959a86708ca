"""benchmarks/grid_feedback.py runs end to end at its --quick size and writes the JSON the
results table reads (the effect run and the penalty's cost record)."""
from __future__ import annotations

import json

import pytest
from support import benchmark

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane


def test_grid_benchmark_quick_runs_and_writes_its_json(tmp_path):
    grid_feedback = benchmark("grid_feedback")

    out = tmp_path / "grid.json"
    payload = grid_feedback.main(["--data", "biased-digits", "--quick", "--threads", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["quick"] and saved["name"] == "grid_feedback" and saved["provenance"]["git_commit"]
    for run in grid_feedback.RUNS:
        for key in ("conflicting_acc", "aligned_acc", "gradient_in_mask"):
            assert saved[f"{key}_{run}"] is not None and f"{key}_{run}_sd" in saved, (key, run)
    (seed,) = saved["per_seed"]
    assert 0 < seed["images_reviewed"] <= 10 and seed["squares_marked"] > 0  # --quick: one review of K = 10
    assert seed["squares_marked_random_squares"] == seed["squares_marked"]  # the control marks as many squares
    assert seed["images_reviewed_random_squares"] == seed["images_reviewed"]
    # the CE control trains on the same reviewed images with their CE in the penalty's place: calibrated to
    # `share` x their CE, its lambda is the share itself (the grid penalty's lambda is not)
    assert seed["images_reviewed_reviewed_ce"] == seed["images_reviewed"]
    assert seed["lambda_reviewed_ce"] == pytest.approx(saved["params"]["share"], rel=1e-4)
    assert seed["lambda_feedback"] != pytest.approx(saved["params"]["share"], rel=1e-2)
    assert payload["gain_over_reviewed_ce"]["seeds"] == 1
    assert saved["seeds"]["reported_on"] == [0] and saved["seeds"]["tuned_on"] == grid_feedback.TUNED_ON
    # a learning rate that trains: no run diverged, and the count says so
    assert payload["gain_over_baseline"]["seeds"] == 1 and saved["diverged_runs"] == 0
    assert saved["diverged"] == {r: 0 for r in grid_feedback.RUNS}
    assert all(seed[f"status_{r}"] == "done" for r in grid_feedback.RUNS), {r: seed[f"status_{r}"] for r in grid_feedback.RUNS}
    # counterexamples: the same reviewed images; the effect record reads the per-seed figures
    assert seed["images_reviewed_counterexamples"] == seed["images_reviewed"]
    assert seed["squares_marked_counterexamples_random"] == seed["squares_marked"]
    effect = saved["effect"]
    assert effect["arm"] == grid_feedback.HEADLINE and effect["seeds"] == [0]
    assert effect["ours"] == seed[f"conflicting_acc_{grid_feedback.HEADLINE}"]
    assert effect["same_information"] == seed["conflicting_acc_reviewed_ce"]
    assert effect["random_region"] == seed[f"conflicting_acc_{grid_feedback.RANDOM_OF[grid_feedback.HEADLINE]}"]
    assert effect["before"] == seed["conflicting_acc_baseline"] and effect["oracle"] == seed["oracle"] is not None

    cost = tmp_path / "cost.json"
    rec = grid_feedback.main(["--data", "biased-digits", "--quick", "--speed-only", "--threads", "1",
                              "--json", str(cost)])
    saved = json.loads(cost.read_text())
    assert saved["name"] == "grid_penalty_cost" and saved["target"] == 1.5 and saved["ratio"] == rec["ratio"] > 0
    assert saved["params"]["reviewed_images"] == 50 and saved["quick"]  # R = 50, as the acceptance says


def test_grid_benchmark_reports_runs_that_diverge_before_any_review(tmp_path):
    """A learning rate that blows up in the first epoch: every run diverges before a reviewed
    step, so no lambda was calibrated; the benchmark still writes its JSON and counts them."""
    grid_feedback = benchmark("grid_feedback")

    out = tmp_path / "grid.json"
    grid_feedback.main(["--data", "biased-digits", "--quick", "--threads", "1", "--lr", "50", "--json", str(out)])
    saved = json.loads(out.read_text())
    (seed,) = saved["per_seed"]
    assert saved["diverged_runs"] == len(grid_feedback.RUNS) and saved["diverged"] == {r: 1 for r in grid_feedback.RUNS}
    assert all(seed[f"status_{r}"] == "diverged" for r in grid_feedback.RUNS)
    assert seed["lambda_feedback"] is None and seed["images_reviewed"] == 0
    assert saved["target_met"] is False
