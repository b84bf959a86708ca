"""benchmarks/report.py: the README's results table is generated from benchmark JSON files.
The test writes small JSON files in the formats the benchmarks write and checks the table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PROV = {"git_commit": "abcdef1234567890", "git_dirty": False, "git_dirty_paths": [], "device": "cpu", "cuda": None,
        "torch": "2.15.0", "python": "3.11.7", "cpus": 2, "torch_threads": 2}


def fig(mean, sd=0.5):
    return {"mean": mean, "sd": sd, "values": [mean]}


def latent(quick=False):
    def run(acc, moved):
        return {"heldout_acc_after": fig(acc), "heldout_fixed": fig(10.0), "heldout_broken": fig(4.0),
                "moved_fixed": fig(moved), "test_acc_after": fig(95.0)}

    return {
        "name": "latent_editing", "quick": quick,
        "headline": {"figure": "heldout_acc_after", "variant": "lifted", "key": "lifted"},
        "before": {"heldout_acc_before": fig(94.0), "heldout_n": fig(800, 10), "heldout_wrong_before": fig(40.0),
                   "test_acc_before": fig(94.5), "moved_fixed_before": fig(0.0), "r2_pool": fig(1.0, 0)},
        "runs": {"lifted": run(94.1, 96.7), "paper": run(93.0, 30.0), "ce_moved": run(94.6, 100.0),
                 "ce_only": run(94.3, 20.0)},
        "comparisons": {"lifted": {"ce_moved": {"mean": -0.5, "sd": 0.2, "higher_on": 0, "seeds": 3, "beats": False},
                                   "ce_only": {"mean": -0.2, "sd": 0.2, "higher_on": 1, "seeds": 3, "beats": False}},
                        "paper": {"ce_moved": {"mean": -1.6, "sd": 0.2, "higher_on": 0, "seeds": 3, "beats": False},
                                  "ce_only": {"mean": -1.3, "sd": 0.2, "higher_on": 0, "seeds": 3, "beats": False}}},
        "variant_keys": {"lifted": "lifted", "paper": "paper", "implied-label": "implied"},
        "speed": None,
        "per_seed": [{"heldout_acc_before": 94.0, "lifted_heldout_acc_after": 94.5},
                     {"heldout_acc_before": 95.0, "lifted_heldout_acc_after": 94.5}],
        "seeds": {"reported_on": [100, 101, 102], "tuned_on": [0, 1, 2], "tuned": "variant", "overlap": []},
        "params": {"data": "/x/quickdraw", "moves": 30},
        "provenance": PROV,
    }


def monitor(ratio):
    return {"name": "monitor_overhead", "ours_s": 2.2 * ratio, "reference_s": 2.2, "ratio": ratio, "target": 1.10,
            "pass": ratio <= 1.10, "quick": False,
            "probe": {"images": 267, "budget": 0.03, "probes_per_run": [4, 5], "share": [0.02, 0.029],
                      "interval_steps": [90, 95], "probe_s": [0.05, 0.05]},
            "seeds": {"reported_on": [100], "tuned_on": [], "tuned": "nothing", "overlap": []},
            "params": {"model": "seed-cnn", "data": "digits", "epochs_per_run": 10, "pairs": 5},
            "provenance": PROV}


def engine_rows():
    return [{"name": n, "ours_s": 1.0 * r, "reference_s": 1.0, "ratio": r, "target": t, "pass": r <= t, "quick": False,
             "params": {"model": "seed-cnn", "data": "digits", "pairs": 9}, "provenance": PROV}
            for n, r, t in [("engine", 1.02, 1.05), ("engine_stats", 1.12, 1.10), ("frozen", 1.04, 1.05)]]


def write(folder: Path, name: str, payload) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(payload))


def table_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| figure")]


def test_table_names_baseline_target_and_met_for_every_row(report, tmp_path):
    write(tmp_path, "latent_editing.json", latent())
    write(tmp_path, "monitor_overhead.json", monitor(1.07))
    write(tmp_path, "engine_overhead.json", engine_rows())
    md = report.markdown(report.build(tmp_path))
    rows = table_rows(md)
    assert len(rows) == 2 + 2 + 1 + 3  # two variants, fit, test accuracy; monitor; three engine rows
    for r in rows:
        assert len(r) == len(report.COLUMNS)
        figure, ours, baseline, target, met, seeds, file = r
        assert baseline and target and met in ("yes", "**no**", "–") and file.endswith(".json`")
    lifted = next(r for r in rows if "variant lifted" in r[0])
    assert "(default)" in lifted[0] and "94.10 ± 0.50 %" in lifted[1] and "higher on 0/3 seeds" in lifted[1]
    assert "same information" in lifted[2] and "94.60 ± 0.50 %" in lifted[2] and "CE only" in lifted[2]
    assert "+0.00 ± 0.71 points vs before" in lifted[1]
    assert lifted[4] == "**no**"  # ours does not beat the same-information baseline: said plainly
    assert lifted[5] == "100-102 / 0-2"
    fit = next(r for r in rows if "(fit:" in r[0])
    assert "lifted 96.7 ± 0.5 %" in fit[1] and fit[4] == "–"
    mon = next(r for r in rows if r[6] == "`monitor_overhead.json`")
    assert mon[1].startswith("1.070") and "activation probe" in mon[0] and mon[3] == "<= 1.1" and mon[4] == "yes"
    assert "4-5 probes per run" in mon[1] and "2.9 % at most" in mon[1]
    stats = next(r for r in rows if "per-filter statistics" in r[0])
    assert stats[4] == "**no**" and "bare hand-written" in stats[2]
    assert "commit `abcdef1234`" in md and "2 CPUs" in md and "torch 2.15.0" in md
    assert "select_retrain" in md.split("Not in this run")[1]  # missing benchmarks are listed with their command
    assert "different commits" not in md
    missed = md.split("Targets not met in this run: ")[1].split("\n")[0]
    assert "variant lifted" in missed and "variant paper" in missed and "per-filter statistics" in missed
    assert "monitor" not in missed.lower()


def test_quick_runs_are_marked_and_kept_out_of_the_readme(report, tmp_path):
    write(tmp_path / "run", "latent_editing.json", latent(quick=True))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\noutro\n")
    assert report.main([str(tmp_path / "run"), "--write-readme", "--readme", str(readme)]) == 1
    assert "old" in readme.read_text()
    md = report.markdown(report.build(tmp_path / "run"))
    assert all("quick smoke run" in r[0] and r[4] == "–" for r in table_rows(md))


def test_write_readme_splices_between_the_markers_only(report, tmp_path, capsys):
    write(tmp_path / "run", "monitor_overhead.json", monitor(1.2))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nkeep this\n{report.START}\n| hand | typed |\n{report.END}\nand this\n")
    assert report.main([str(tmp_path / "run"), "--write-readme", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\nkeep this\n") and text.endswith("and this\n")
    inside = text.split(report.START)[1].split(report.END)[0]
    assert "hand | typed" not in inside and "1.200" in inside and "**no**" in inside
    assert inside.strip() in capsys.readouterr().out  # what is printed is what is written
    again = report.splice(text, report.markdown(report.build(tmp_path / "run")))
    assert again == text  # idempotent
    with pytest.raises(ValueError, match="results:start"):
        report.splice("no markers here", "x")


def test_mixed_commits_unknown_and_old_files_are_reported_not_hidden(report, tmp_path):
    write(tmp_path, "a.json", monitor(1.05))
    other = monitor(1.06) | {"provenance": PROV | {"git_commit": "0123456789abcdef"}}
    write(tmp_path, "b.json", other)
    write(tmp_path, "c.json", {"name": "something_else"})
    write(tmp_path, "e.json", [{"name": "warp_kernel", "ours_s": 0.9, "reference_s": 1.0, "ratio": 0.9, "target": 1.0,
                                "pass": True, "provenance": PROV}])  # a documented speed record: a generic row
    write(tmp_path, "d.json", {"name": "select_retrain", "selected_fixed_fraction": 100.0})  # the old format
    md = report.markdown(report.build(tmp_path))
    assert "2 different commits" in md
    assert "'something_else' has no row builder" in md
    gen = next(r for r in table_rows(md) if "warp_kernel" in r[0])
    assert gen[1].startswith("0.900") and gen[3] == "<= 1.0" and gen[4] == "yes"
    assert "`d.json`: select_retrain in an older or unknown format" in md
    assert len(table_rows(md)) == 3


def test_numbers_never_read_minus_zero(report):
    assert report.num(-0.0001, "+.2f") == "+0.00" and report.num(-0.0001) == "0.00"
    assert report.num(-1.5, "+.2f") == "-1.50" and report.num(None) == "–" and report.num(float("nan")) == "–"
    assert report.ms({"mean": 1.0, "sd": 0.25}, "+.2f", " points") == "+1.00 ± 0.25 points"


def grid(gain_base=12.0, gain_random=9.0, images=40):
    per = [{"seed": s, "conflicting_acc_baseline": 20.0, "conflicting_acc_random_squares": 23.0,
            "conflicting_acc_feedback": 32.0} for s in range(3)]
    return {"name": "grid_feedback", "data": "biased-digits:../shared/data/mnist?rho=0.997", "quick": False,
            "conflicting_acc_baseline": 20.0, "conflicting_acc_baseline_sd": 1.0,
            "conflicting_acc_random_squares": 23.0, "conflicting_acc_random_squares_sd": 2.0,
            "conflicting_acc_feedback": 20.0 + gain_base, "conflicting_acc_feedback_sd": 3.0,
            "aligned_acc_baseline": 99.9, "aligned_acc_baseline_sd": 0.1, "aligned_acc_random_squares": 99.0,
            "aligned_acc_random_squares_sd": 0.2, "aligned_acc_feedback": 98.0, "aligned_acc_feedback_sd": 0.3,
            "gradient_in_mask_baseline": 25.0, "gradient_in_mask_random_squares": 26.0, "gradient_in_mask_feedback": 40.0,
            "reviewed_fit_acc_baseline": 90.0, "reviewed_fit_acc_random_squares": 91.0, "reviewed_fit_acc_feedback": 95.0,
            "images_reviewed": images, "images_reviewed_max": images, "squares_marked": 1200.0,
            "gain_over_baseline": {"mean": gain_base, "sd": 1.5, "higher_on": 3, "seeds": 3, "beats": True},
            "gain_over_random_squares": {"mean": gain_random, "sd": 2.5, "higher_on": 3, "seeds": 3, "beats": True},
            "diverged": {"baseline": 0, "random_squares": 0, "feedback": 1}, "diverged_runs": 1,
            "target_met": gain_base >= 10 and gain_random >= 10, "target_points": 10.0, "per_seed": per,
            "params": {"epochs": 5, "review_k": 10, "limit_per_class": 2000},
            "seeds": {"reported_on": [0, 1, 2], "tuned_on": [100, 101, 102], "tuned": "share", "overlap": []},
            "provenance": PROV}


def test_missing_benchmarks_are_told_by_file_not_by_record_name(report, tmp_path):
    # the decoy grid run writes a record named "grid_feedback": the colour run is still missing, the decoy one is not
    write(tmp_path, "grid_feedback_decoy.json", grid())
    rep = report.build(tmp_path)
    assert "grid_feedback_decoy" not in rep["missing"]
    assert {"grid_feedback", "grid_feedback_texture"} <= set(rep["missing"])


def test_grid_feedback_rows_compare_with_both_baselines_and_the_cost_row(report, tmp_path):
    write(tmp_path, "grid_feedback.json", grid())
    write(tmp_path, "grid_penalty_cost.json",
          {"name": "grid_penalty_cost", "ours_s": 1.3, "reference_s": 1.0, "ratio": 1.3, "target": 1.5, "pass": True,
           "quick": False, "params": {"reviewed_images": 50, "per_step": 8, "steps": 30, "batch_size": 64,
                                      "model": "seed-cnn", "pairs": 7}, "provenance": PROV})
    rep = report.build(tmp_path)
    assert not {"grid_feedback", "grid_penalty_cost"} & set(rep["missing"]) and not rep["notes"]
    rows = table_rows(report.markdown(rep))
    head = next(r for r in rows if "bias-conflicting" in r[0])
    assert "32.00 ± 3.00 %" in head[1] and "+12.00 ± 1.50 points" in head[1] and "+9.00 ± 2.50 points" in head[1]
    assert "20.00 ± 1.00 %" in head[2] and "23.00 ± 2.00 %" in head[2] and "random squares" in head[2]
    assert "2000 images per class" in head[0] and "40 images" in head[0]
    assert head[4] == "**no**" and head[5] == "0-2 / 100-102"  # +9 over random squares: not met, said plainly
    second = next(r for r in rows if "bias-aligned" in r[0])
    assert "98.00 ± 0.30 %" in second[1] and "diverged runs: 1 / 0 / 0" in second[2] and second[4] == "–"
    cost = next(r for r in rows if "R = 50" in r[0])
    assert cost[1].startswith("1.300") and cost[3] == "<= 1.5" and cost[4] == "yes"
    write(tmp_path, "grid_feedback.json", grid(gain_random=11.0, images=60))  # the gain, but over 50 images
    rows = table_rows(report.markdown(report.build(tmp_path)))
    assert next(r for r in rows if "bias-conflicting" in r[0])[4] == "**no**"
    write(tmp_path, "grid_feedback.json", grid(gain_random=11.0))
    rows = table_rows(report.markdown(report.build(tmp_path)))
    assert next(r for r in rows if "bias-conflicting" in r[0])[4] == "yes"


def test_grid_feedback_shows_the_reviewed_ce_control_when_measured(report, tmp_path):
    """The second control (the reviewed images' CE, no squares) gets its own row, outside the
    target; a file from before it was measured has no such row."""
    write(tmp_path, "grid_feedback.json", grid())
    assert not [r for r in table_rows(report.markdown(report.build(tmp_path))) if "second control" in r[0]]
    ce = grid() | {"conflicting_acc_reviewed_ce": 35.0, "conflicting_acc_reviewed_ce_sd": 4.0,
                   "reviewed_fit_acc_reviewed_ce": 100.0,
                   "gain_over_reviewed_ce": {"mean": -3.0, "sd": 2.0, "higher_on": 0, "seeds": 3, "beats": False}}
    write(tmp_path, "grid_feedback.json", ce)
    rows = table_rows(report.markdown(report.build(tmp_path)))
    (control,) = [r for r in rows if "second control" in r[0]]
    assert "-3.00 ± 2.00 points, higher on 0/3 seeds" in control[1] and "35.00 ± 4.00 %" in control[2]
    assert control[4] == "–"  # not the target
    assert next(r for r in rows if "bias-conflicting" in r[0])[4] == "**no**"  # the headline row is unchanged


def test_run_all_plans_every_benchmark_into_one_folder(tmp_path, capsys):
    """run_all.py runs every command the README's table needs, each writing into the run's
    own folder (JSON files and the base-model cache), speed figures first."""
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    from report import COMMANDS

    plan = run_all.planned(tmp_path)
    assert [n for n, _ in plan][0] == "monitor_overhead" and {n for n, _ in plan} == set(COMMANDS)
    for name, argv in plan:
        outs = [a for a in argv if "/" in a and (a.endswith(".json") or a.endswith("/cache"))]
        assert outs and all(a.startswith(str(tmp_path)) for a in outs), (name, argv)
        assert not any(a.startswith("bench-results/") for a in argv)
    assert [n for n, _ in run_all.planned(tmp_path, only=["freezing"])] == ["freezing"]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.planned(tmp_path, skip=["nonsense"])
    assert run_all.main(["--dry-run", "--out", str(tmp_path), "--only", "streamed_tsne"]) == 0
    assert "benchmarks/streamed_tsne.py" in capsys.readouterr().out
    assert not tmp_path.joinpath("run.json").exists()
    # the table's header names a folder inside the repository relatively, so another checkout can use it
    assert run_all.shown_folder(ROOT / "results" / "run-x") == Path("results/run-x")
    assert run_all.shown_folder(tmp_path) == tmp_path


def test_study_load_rows_report_the_response_memory_and_every_failed_check(report, tmp_path):
    checks = {"all_finished": True, "nothing_lost_at_kill": True, "own_data_only": True}
    rec = {"name": "study_load", "p95_busy_s": 2.5, "p95_all_s": 2.6, "peak_rss_mb": 1500.4, "checks": checks,
           "pass": True, "quick": False, "provenance": PROV,
           "timing": {"busy": {"n": 40, "p50_s": 1.0, "p95_s": 2.5, "max_s": 4.0},
                      "all": {"n": 50, "p50_s": 1.0, "p95_s": 2.6, "max_s": 4.0}},
           "params": {"participants": 8, "budget": 3, "epochs": 20, "machine_speed": {"before": {"speed_vs_anchor": 0.5}}}}
    write(tmp_path, "study_load.json", rec)
    rows = table_rows(report.markdown(report.build(tmp_path)))
    resp = next(r for r in rows if "page response" in r[0])
    assert "8 participants" in resp[0] and resp[1].startswith("2.50 s") and "0.50x the speed anchor" in resp[1]
    assert resp[4] == "–"  # no target in the issue: none invented
    assert next(r for r in rows if "peak server memory" in r[0])[1] == "1500 MB"
    assert next(r for r in rows if "Study load: checks" in r[0])[1:5] == ["all hold", "–", "all hold", "yes"]
    write(tmp_path, "study_load.json", {**rec, "checks": {**checks, "own_data_only": False}, "pass": False})
    row = next(r for r in table_rows(report.markdown(report.build(tmp_path))) if "Study load: checks" in r[0])
    assert row[1] == "failed: own_data_only" and row[4] == "**no**"


def test_rows_measured_on_a_gpu_name_it_next_to_the_figure(report, tmp_path):
    gpu = engine_rows()
    gpu[0]["params"] |= {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    gpu[1]["params"] |= {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}  # engine_overhead's first GPU files
    gpu[2]["params"] |= {"device": "cpu"}
    write(tmp_path, "engine_overhead.json", gpu)
    tsne_like = monitor(1.05)
    tsne_like["params"] |= {"device": "cuda:1", "device_note": "t-SNE is CPU-only"}
    write(tmp_path, "monitor_overhead.json", tsne_like)
    rows = table_rows(report.markdown(report.build(tmp_path)))
    engine = next(r for r in rows if "engine `fit`" in r[0])
    assert engine[1].startswith("1.020 (1.02 s vs 1.00 s)") and engine[1].endswith("; on cuda (NVIDIA H100 80GB HBM3)")
    assert next(r for r in rows if "per-filter statistics" in r[0])[1].endswith("; on cuda (NVIDIA H100 80GB HBM3)")
    frozen = next(r for r in rows if "conv1-2 frozen" in r[0])
    assert " on " not in frozen[1]  # a CPU figure, as in the files from before --device, says nothing
    mon = next(r for r in rows if r[6] == "`monitor_overhead.json`")
    assert mon[1].endswith("; on cuda:1; t-SNE is CPU-only") and mon[4] == "yes"


def test_gradcam_rows_give_the_forward_pass_floor_when_it_was_measured(report, tmp_path):
    base = {"ours_s": 0.024, "reference_s": 0.052, "target": 0.33, "quick": False, "provenance": PROV,
            "params": {"model": "seed-cnn", "batch": 64}}
    recs = [{**base, "name": "gradcam_seed-cnn", "ratio": 0.45, "pass": False, "forward_s": 0.021, "floor_ratio": 0.41},
            {**base, "name": "gradcam_vgg6", "ratio": 0.38, "pass": False, "params": {"model": "vgg6", "batch": 64}}]
    write(tmp_path, "gradcam_speed.json", recs)
    rows = table_rows(report.markdown(report.build(tmp_path)))
    cnn = next(r for r in rows if "seed-cnn, batch 64" in r[0])
    assert cnn[1] == ("0.450 (0.024 s vs 0.052 s; the forward pass alone, without autograd: 0.410, "
                      "a pass every Grad-CAM must make)") and cnn[4] == "**no**"
    vgg = next(r for r in rows if "vgg6, batch 64" in r[0])
    assert vgg[1] == "0.380 (0.024 s vs 0.052 s)"  # a file from before the floor was measured: nothing invented


def test_compile_speed_rows_give_each_ratio_with_its_times_and_no_invented_target(report, tmp_path):
    common = {"model": "vgg6", "batch_size": 64, "device": "cpu", "reference": "eager, float32"}
    recs = [{"name": "compile_vgg6", "ours_s": 0.943, "reference_s": 1.0, "ratio": 0.943, "target": None,
             "pass": None, "provenance": PROV,
             "params": {**common, "ours": "torch.compile (default mode), float32", "compile_s": 26.8}},
            {"name": "bf16_vgg6", "ours_s": 15.1, "reference_s": 1.0, "ratio": 15.1, "target": None, "pass": None,
             "provenance": PROV, "params": {**common, "ours": "eager, torch.autocast bfloat16"}}]
    write(tmp_path, "compile_speed.json", recs)
    rep = report.build(tmp_path)
    assert "compile_speed" not in rep["missing"]
    rows = table_rows(report.markdown(rep))
    comp = next(r for r in rows if "torch.compile" in r[0])
    assert "vgg6" in comp[0] and comp[1].startswith("0.943 (0.943 s vs 1.000 s; compile 26.8 s once, not counted")
    bf16 = next(r for r in rows if "bfloat16" in r[0])
    assert bf16[1].startswith("15.100") and "compile" not in bf16[1]
    assert comp[4] == bf16[4] == "–"  # the issue sets no target: the figures decide the default


def test_run_all_resumes_what_finished_with_the_same_code(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    git = run_all.git_state()
    plan = dict(run_all.planned(tmp_path))
    for name in ("freezing", "engine_overhead"):
        (tmp_path / f"{name}.json").write_text("{}")  # finished and wrote its file
    runs = [{"name": "freezing", "command": " ".join(plan["freezing"]), "exit": 0, "git_commit": git["git_commit"]},
            {"name": "gradcam_speed", "command": " ".join(plan["gradcam_speed"]), "exit": 1,  # failed: run again
             "git_commit": git["git_commit"]},
            {"name": "streamed_tsne", "command": " ".join(plan["streamed_tsne"]), "exit": 0,  # its JSON is gone
             "git_commit": git["git_commit"]},
            # measured at a commit this repository does not know: its code cannot be shown the same
            {"name": "engine_overhead", "command": " ".join(plan["engine_overhead"]), "exit": 0,
             "git_commit": "0" * 40}]
    (tmp_path / "run.json").write_text(json.dumps({"git": git, "runs": runs}))
    record, done = run_all.resumed(tmp_path, git)
    assert done == {"freezing"} and record["runs"] == runs and len(record["resumed"]) == 1
    assert "engine_overhead: its code changed" in capsys.readouterr().out
    # a try at an unknown commit, then a finished rerun: the latest try decides, silently
    runs2 = runs + [dict(runs[3], git_commit=git["git_commit"])]
    (tmp_path / "run.json").write_text(json.dumps({"git": git, "runs": runs2}))
    record, done = run_all.resumed(tmp_path, git)
    assert done == {"freezing", "engine_overhead"} and "its code changed" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no run in"):
        run_all.resumed(tmp_path / "elsewhere", git)
    # without --resume, a folder that holds a run is not written over
    assert run_all.main(["--out", str(tmp_path), "--only", "freezing", "--allow-dirty"]) == 2


def test_benchmark_code_follows_the_product_the_helpers_and_the_own_script_only(tmp_path):
    """A fix to one benchmark's script reruns that benchmark alone (and those importing it);
    a change to the product or to _common.py changes every benchmark's code."""
    spec = importlib.util.spec_from_file_location("bench_runs", ROOT / "benchmarks" / "_runs.py")
    runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runs)
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    def commit(path, text):
        f = tmp_path / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        git("add", path)
        git("commit", "-q", "-m", path)
        return git("rev-parse", "HEAD")

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    commit("core/engine.py", "x = 1\n")
    commit("benchmarks/_common.py", "ROOT = 1\n")
    commit("benchmarks/engine_overhead.py", "from _common import ROOT\n")
    commit("benchmarks/monitor_overhead.py", "from _common import ROOT\nfrom engine_overhead import x\n")
    c0 = commit("benchmarks/freezing.py", "import json\n\ndef f():\n    import _common\n")

    def codes(c):
        return {s: runs.benchmark_code(s, c, tmp_path) for s in ("engine_overhead.py", "monitor_overhead.py",
                                                                 "freezing.py")}

    assert runs.code_paths("monitor_overhead.py", c0, tmp_path) == (
        ".streamlit", "app", "benchmarks/_common.py", "benchmarks/engine_overhead.py",
        "benchmarks/monitor_overhead.py", "core", "pages", "requirements.txt")
    before = codes(c0)
    c1 = commit("benchmarks/freezing.py", "import json\n# a fix of the driver\n")
    c2 = commit("README.md", "results\n")
    after = codes(c2)
    assert after["freezing.py"] != before["freezing.py"]
    assert {k: v for k, v in after.items() if k != "freezing.py"} == \
        {k: v for k, v in before.items() if k != "freezing.py"}
    assert runs.changed_paths("freezing.py", c0, c2, tmp_path) == ["benchmarks/freezing.py"]
    assert codes(c1) == after  # the README is not measured code
    c3 = commit("benchmarks/engine_overhead.py", "from _common import ROOT\nx = 2\n")
    assert codes(c3)["monitor_overhead.py"] != after["monitor_overhead.py"]  # it imports engine_overhead
    assert codes(c3)["freezing.py"] == after["freezing.py"]
    c4 = commit("core/engine.py", "x = 2\n")
    assert all(codes(c4)[k] != codes(c3)[k] for k in after)  # the product: every benchmark
    assert runs.product_code(c4, tmp_path) != runs.product_code(c3, tmp_path)
    assert runs.product_code(c3, tmp_path) == runs.product_code(c1, tmp_path)
    assert runs.benchmark_code("freezing.py", "0" * 40, tmp_path) is None
    # uncommitted paths: the run's own log is not measured code, the product and the script are
    dirty = ["results/run-x/freezing.log", "core/engine.py", "benchmarks/freezing.py", "benchmarks/engine_overhead.py",
             "corex.py"]
    assert runs.dirty_code("freezing.py", c4, dirty, tmp_path) == ["core/engine.py", "benchmarks/freezing.py"]
    assert runs.dirty_code("freezing.py", c4, dirty[:1], tmp_path) == []


def test_run_all_counts_the_latest_try_of_each_benchmark():
    """A benchmark that failed and then passed on --resume is not reported as failed."""
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    runs = [{"name": "a", "exit": 1}, {"name": "b", "exit": 0}, {"name": "a", "exit": 0}, {"name": "c", "exit": 0},
            {"name": "c", "exit": 2}]
    assert run_all.failed_runs({"runs": runs}) == ["c"]
    assert run_all.failed_runs({"runs": runs[:1]}) == ["a"]


def test_run_all_commits_its_folder_and_nothing_else(tmp_path):
    """--commit: what finished is committed (a checkout that does not outlive the session keeps
    it), without the ignored base-model cache and without anything else the user had staged."""
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / ".gitignore").write_text("/results/*/cache/\n")
    (tmp_path / "other.txt").write_text("staged, not a result\n")
    git("add", ".gitignore", "other.txt")
    out = tmp_path / "results" / "run-abc"
    (out / "cache").mkdir(parents=True)
    (out / "cache" / "base.pt").write_bytes(b"weights")
    (out / "freezing.json").write_text("{}")
    (out / "run.json").write_text("{}")
    assert run_all.commit_results(out, "results: freezing", root=tmp_path)
    assert git("log", "--format=%s") == "results: freezing\n"
    assert sorted(git("ls-tree", "-r", "--name-only", "HEAD").split()) == ["results/run-abc/freezing.json",
                                                                            "results/run-abc/run.json"]
    assert "A  other.txt" in git("status", "--porcelain")  # still staged, not committed
    # outside the repository: said, not raised, and the run goes on
    assert not run_all.commit_results(tmp_path.parent / "elsewhere", "x", root=tmp_path)
    # a folder inside the repository is planned with relative paths, so another checkout resumes it
    plan = dict(run_all.planned(ROOT / "results" / "run-test", only=["freezing"]))
    assert any(a == "results/run-test/freezing.json" for a in plan["freezing"])


def test_a_run_resumed_across_commits_of_the_same_measured_code_is_one_run(report, tmp_path):
    code = {"git_code": "c0de" * 10}
    write(tmp_path, "a.json", monitor(1.05) | {"provenance": PROV | code})
    write(tmp_path, "b.json", monitor(1.06) | {"provenance": PROV | code | {"git_commit": "0123456789abcdef"}})
    md = report.markdown(report.build(tmp_path))
    assert "not one run" not in md and "commits `0123456789`, `abcdef1234`" in md
    write(tmp_path, "b.json", monitor(1.06) | {"provenance": PROV | {"git_code": "beef" * 10}})
    assert "2 different commits of the measured code" in report.markdown(report.build(tmp_path))


def test_a_dirty_log_of_the_run_itself_does_not_mark_the_figures_dirty(report, tmp_path):
    """run_all's log of the running benchmark is tracked in results/ and modified while it runs:
    the figure still comes from committed code. A modified product file does mark it."""
    import subprocess
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    prov = PROV | {"git_commit": head, "git_dirty": True}
    write(tmp_path, "monitor_overhead.json",
          monitor(1.05) | {"provenance": prov | {"git_dirty_paths": ["results/run-1/monitor_overhead.log"]}})
    assert "working tree dirty" not in report.markdown(report.build(tmp_path))
    write(tmp_path, "monitor_overhead.json",
          monitor(1.05) | {"provenance": prov | {"git_dirty_paths": ["core/engine.py"]}})
    assert "working tree dirty in the measured code" in report.markdown(report.build(tmp_path))


@pytest.mark.slow
def test_attention_page_run_loads_the_browser_harness_outside_pytest():
    """benchmarks/attention_page_run.py reuses tests/browser/conftest.py by path, in a plain
    process where pytest has not put tests/browser on sys.path (it once failed there)."""
    import subprocess
    import sys

    code = ("import sys, importlib.util; sys.path.insert(0, 'benchmarks'); "
            "spec = importlib.util.spec_from_file_location('apr', 'benchmarks/attention_page_run.py'); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m._conftest().BASE_NAME)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(".pt")


def attention(div_ours: list[int], div_base: list[int]) -> dict:
    r = {"acc_after": 19.0, "acc_after_sd": 4.0, "aligned_acc_after": 73.0, "attention_in_mask_before": 19.4,
         "attention_in_mask_after": 42.2, "baseline_acc_after": 10.5, "baseline_acc_after_sd": 0.5,
         "baseline_aligned_acc_after": 19.7, "baseline_attention_in_mask_after": 6.5, "gain_over_baseline": 8.5,
         "gain_over_baseline_sd": 3.7}
    seeds = [{"seed": i, "per_sampler": {"entropy": {"rounds_diverged": o, "baseline_rounds_diverged": b}}}
             for i, (o, b) in enumerate(zip(div_ours, div_base))]
    return {"name": "attention_guidance", "data": "biased-digits", "quick": False, "conflicting_acc_before": 13.5,
            "per_sampler": {"entropy": r}, "ranking": ["entropy"], "best_sampler": "entropy", "target_points": 15,
            "per_seed": seeds, "params": {"budget": 256, "rounds": 4},
            "seeds": {"reported_on": [0, 1, 2], "tuned_on": [100], "tuned": "lr", "overlap": []}, "provenance": PROV}


def test_attention_rows_show_the_baselines_collapse_and_the_gain_over_before(report, tmp_path):
    """A baseline that collapsed to one class flatters 'points over the baseline': the row gives
    its bias-aligned accuracy, the divergences of both sides and the gain over the accuracy before."""
    write(tmp_path, "attention_guidance.json", attention([1, 0, 0], [4, 2, 0]))
    rows = [r for r in table_rows(report.markdown(report.build(tmp_path))) if r[0].startswith("Attention clicks")]
    assert len(rows) == 1
    ours, base = rows[0][1], rows[0][2]
    assert "(+5.50 points vs before)" in ours and "rounds diverged 1 of 12" in ours
    assert "bias-aligned 19.70 %" in base and "rounds diverged 6 of 12" in base and "on the object 6.5 %" in base
    assert rows[0][4] == "**no**"
    assert "its own lr" not in base  # an older file: one lr for both
    payload = attention([0, 0, 0], [0, 0, 0])
    payload["params"] |= {"fine_tune": {"lr": 0.03}, "baseline_fine_tune": {"lr": 0.001}}
    write(tmp_path, "attention_guidance.json", payload)
    md = report.markdown(report.build(tmp_path))
    assert "same steps, its own lr 0.001 (ours 0.03, tuned apart)" in md


def page_run(per_set: dict | None) -> dict:
    p = {"name": "attention_page_run", "ours_s": 95.0, "target": 180.0, "pass": True, "quick": False,
         "page_numbers": [15.1, 98.2, 30.5], "library_numbers": [15.1, 98.2, 30.5], "numbers_equal": True,
         "seeds": {"reported_on": [0], "tuned_on": [], "tuned": "nothing", "overlap": []},
         "params": {"images": 16, "clicks": 40, "epochs": None, "same_information_lr": 0.001}, "provenance": PROV}
    if per_set is not None:
        def one(before, after, base, seconds, equal=True):
            return {"before": before, "after": after, "same_information": base,
                    "gain_over_same_information": after - base,
                    "seconds": seconds, "numbers_equal": equal, "images": 16, "clicks": 40,
                    "settings": {"sampler": "gmm", "lr": 0.01, "epochs": 20}}
        p |= {"per_set": {k: one(*v) for k, v in per_set.items()}, "target_points": 5.0}
        p["numbers_equal"] = all(v["numbers_equal"] for v in p["per_set"].values())
    return p


def test_attention_page_run_rows_give_one_row_per_set_and_the_timing(report, tmp_path):
    """With per_set: the timing row names every set's seconds, and each set has its own row
    with the rise over the same-information baseline against the +5 target."""
    write(tmp_path, "attention_page_run.json",
          page_run({"biased-digits": (12.0, 20.5, 13.0, 95.0), "decoy-digits": (30.0, 33.0, 31.0, 80.0)}))
    rows = [r for r in table_rows(report.markdown(report.build(tmp_path))) if r[6] == "`attention_page_run.json`"]
    assert len(rows) == 3
    timing, biased, decoy = rows
    assert "START to new version" in timing[0]
    assert "biased-digits 95 s" in timing[1] and "decoy-digits 80 s" in timing[1]
    assert "equal the library's on every set" in timing[1]
    assert timing[3] == "< 180 s on every set" and timing[4] == "yes"
    assert "biased-digits" in biased[0] and "gmm sampler" in biased[0] and "12.0 % before" in biased[0]
    assert "20.5 %; +7.5 points over same information" in biased[1]
    assert "13.0 %" in biased[2] and "lr 0.001" in biased[2]
    assert biased[3] == ">= +5 points over same information" and biased[4] == "yes"
    assert "decoy-digits" in decoy[0] and "+2.0 points" in decoy[1] and decoy[4] == "**no**"
    # a set whose page numbers differ is named, and the timing row is not met
    payload = page_run({"biased-digits": (12.0, 20.5, 13.0, 95.0), "decoy-digits": (30.0, 40.0, 31.0, 80.0, False)})
    write(tmp_path, "attention_page_run.json", payload)
    timing = [r for r in table_rows(report.markdown(report.build(tmp_path))) if "START to new version" in r[0]][0]
    assert "**differ from** the library's on decoy-digits" in timing[1] and timing[4] == "**no**"


def test_attention_page_run_rows_read_files_from_before_the_sets(report, tmp_path):
    write(tmp_path, "attention_page_run.json", page_run(None))
    rows = [r for r in table_rows(report.markdown(report.build(tmp_path))) if r[6] == "`attention_page_run.json`"]
    assert len(rows) == 1
    assert "16 images annotated (40 clicks)" in rows[0][0]
    assert rows[0][1].startswith("95 s; page's test-mode numbers equal")
    assert rows[0][3] == "< 180 s" and rows[0][4] == "yes"


def test_attention_page_run_rows_name_the_rehearsal_images_of_both_arms(report, tmp_path):
    """A run whose page rehearsed says so in the arm and in the baseline (which trains on the
    same rehearsal images); one without (files from before rehearsal) mentions none."""
    payload = page_run({"biased-digits": (12.0, 20.5, 13.0, 95.0)})
    payload["per_set"]["biased-digits"]["settings"] |= {"lr": 0.003, "rehearsal": 112}
    write(tmp_path, "attention_page_run.json", payload)
    demo = [r for r in table_rows(report.markdown(report.build(tmp_path))) if "Attention page demo" in r[0]][0]
    assert "lr 0.003, 20 epochs, 112 rehearsal images" in demo[0]
    assert "the annotations the page stored, the same rehearsal images, same epochs" in demo[2]
    write(tmp_path, "attention_page_run.json", page_run({"biased-digits": (12.0, 20.5, 13.0, 95.0)}))
    demo = [r for r in table_rows(report.markdown(report.build(tmp_path))) if "Attention page demo" in r[0]][0]
    assert "rehearsal" not in demo[0] + demo[2]
