"""Results table from the JSON files of one benchmark run, as Markdown.

    python benchmarks/report.py [DIR] [--write-readme] [--readme README.md] [--allow-quick]

Reads every ``*.json`` a benchmark wrote into DIR (default ``bench-results/``, git-ignored),
prints one Markdown table with a row per figure (what ours measured, the baseline or
reference it is compared with, the target and whether it is met, the seeds it was reported
on and tuned on, and the file; a figure measured with ``--device`` other than the CPU names the
device and the GPU next to its value), followed by the provenance of the files (git commit and
whether the tree was dirty, device, torch and Python versions, CPUs and threads) and the
benchmarks that have no file in DIR. With ``--write-readme`` the block replaces what lies
between ``<!-- results:start -->`` and ``<!-- results:end -->`` in the README, so that no
figure in the README is typed by hand. Files from ``--quick`` runs are smoke tests, not
results: they are marked, and ``--write-readme`` refuses them unless ``--allow-quick``.

Standard library only (no torch import), so it runs in a fraction of a second.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import benchmark_code, commit_time, dirty_code, script_of  # noqa: E402  (standard library only)

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = ["figure", "ours", "baseline / reference", "target", "met", "seeds (reported / tuned on)", "file"]

# Every benchmark and the command that writes its JSON file for the README's table.
COMMANDS = {
    "latent_editing": "python benchmarks/latent_editing.py --data ../shared/data/quickdraw --moves 30 --epochs 2 "
                      "--seeds 3 --cache bench-results/cache --json bench-results/latent_editing.json",
    "latent_update_speed": "python benchmarks/latent_editing.py --data ../shared/data/quickdraw --speed-only "
                           "--cache bench-results/cache --json bench-results/latent_update_speed.json",
    "select_retrain": "python benchmarks/select_retrain.py --seeds 3 --json bench-results/select_retrain.json",
    "monitor_overhead": "python benchmarks/monitor_overhead.py --json bench-results/monitor_overhead.json",
    "streamed_tsne": "python benchmarks/streamed_tsne.py --json bench-results/streamed_tsne.json",
    "freezing": "python benchmarks/freezing.py --json bench-results/freezing.json",
    "engine_overhead": "python benchmarks/engine_overhead.py --pairs 9 --json bench-results/engine_overhead.json",
    "app_latency": "python benchmarks/app_latency.py --first-start --json bench-results/app_latency.json",
    "attention_guidance": "python benchmarks/attention_guidance.py --data biased-digits:../shared/data/mnist --rho 0.997 "
                          "--budget 256 --seeds 3 --cache bench-results/cache "
                          "--json bench-results/attention_guidance.json",
    "attention_guidance_decoy": "python benchmarks/attention_guidance.py --data decoy-digits:../shared/data/mnist "
                                "--budget 256 --seeds 3 --cache bench-results/cache "
                                "--json bench-results/attention_guidance_decoy.json",
    "attention_guidance_texture": "python benchmarks/attention_guidance.py --data texture-digits:../shared/data/mnist "
                                  "--rho 0.997 --budget 256 --seeds 3 --cache bench-results/cache "
                                  "--json bench-results/attention_guidance_texture.json",
    "attention_page_run": "python benchmarks/attention_page_run.py --json bench-results/attention_page_run.json",
    "gradcam_speed": "python benchmarks/gradcam_speed.py --json bench-results/gradcam_speed.json",
    "long_session": "python benchmarks/long_session.py --json bench-results/long_session.json",
    "grid_feedback": "python benchmarks/grid_feedback.py --data biased-digits:../shared/data/mnist --rho 0.997 "
                     "--epochs 5 --review-k 10 --seeds 3 --cache bench-results/cache "
                     "--json bench-results/grid_feedback.json",
    "grid_feedback_decoy": "python benchmarks/grid_feedback.py --data decoy-digits:../shared/data/mnist "
                           "--epochs 5 --review-k 10 --seeds 3 --cache bench-results/cache "
                           "--json bench-results/grid_feedback_decoy.json",
    "grid_feedback_texture": "python benchmarks/grid_feedback.py --data texture-digits:../shared/data/mnist --rho 0.997 "
                             "--epochs 5 --review-k 10 --seeds 3 --cache bench-results/cache "
                             "--json bench-results/grid_feedback_texture.json",
    "grid_penalty_cost": "python benchmarks/grid_feedback.py --speed-only --json bench-results/grid_penalty_cost.json",
    "compile_speed": "python benchmarks/compile_speed.py --json bench-results/compile_speed.json",
    "study_load": "python benchmarks/study_load.py --participants 8 --budget 3 --epochs 20 --kill-after 8 "
                  "--json bench-results/study_load.json",
}


# ----------------------------------------------------------------------------- formatting
def num(v, fmt: str = ".2f") -> str:
    if v is None or v != v:
        return "–"
    out = format(v, fmt)
    return format(0.0, fmt) if float(out) == 0 else out  # no "-0.00"


def ms(d: dict | None, fmt: str = ".2f", unit: str = "") -> str:
    """"mean ± sd" of a {"mean", "sd"} dict."""
    if not d or d.get("mean") is None:
        return "–"
    return f"{num(d['mean'], fmt)} ± {num(d.get('sd'), fmt.lstrip('+'))}{unit}"


def yes_no(flag) -> str:
    return "–" if flag is None else ("yes" if flag else "**no**")


def seed_span(seeds: list[int]) -> str:
    seeds = sorted(int(s) for s in seeds or [])
    if not seeds:
        return "–"
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def seeds_cell(payload: dict) -> str:
    rec = payload.get("seeds")
    if not isinstance(rec, dict):
        return "not recorded"
    tuned = seed_span(rec.get("tuned_on", []))
    cell = f"{seed_span(rec.get('reported_on', []))} / {tuned if tuned != '–' else 'none'}"
    if rec.get("overlap"):
        cell += f" (**overlap: {seed_span(rec['overlap'])}**)"
    return cell


def change(per_seed: list[dict], after: str, before: str) -> str:
    """", change vs before +x ± y points" from the per-seed rows (empty when absent)."""
    diffs = [r[after] - r[before] for r in per_seed or [] if after in r and before in r]
    if not diffs:
        return ""
    m = sum(diffs) / len(diffs)
    sd = (sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else 0.0
    return f", {num(m, '+.2f')} ± {num(sd)} points vs before"


def on_device(payload: dict) -> str:
    """"; on cuda (GPU name)" for a record measured with ``--device`` other than the CPU
    (``params.device``; the GPU's name from ``params.device_name``, or ``params.gpu`` in
    engine_overhead's first files), with ``params.device_note`` (what stayed on the CPU) when
    there is one; empty for CPU runs and files written before ``--device``."""
    prm = payload.get("params")
    prm = prm if isinstance(prm, dict) else {}
    device = str(prm.get("device") or "cpu")
    if device == "cpu":
        return ""
    name = prm.get("device_name") or prm.get("gpu")
    note = prm.get("device_note")
    return f"; on {device}" + (f" ({name})" if name else "") + (f"; {note}" if note else "")


def row(figure: str, ours: str, baseline: str, target: str, met, payload: dict, file: str) -> dict:
    ours += on_device(payload)  # absolute times on a GPU mean little without its name
    if payload.get("quick"):
        figure += " (quick smoke run: not a result)"
        met = None
    return {"figure": figure, "ours": ours, "baseline / reference": baseline, "target": target,
            "met": yes_no(met), "seeds (reported / tuned on)": seeds_cell(payload), "file": f"`{file}`"}


# ----------------------------------------------------------------------------- one builder per benchmark
def rows_latent_editing(p: dict, file: str) -> list[dict]:
    runs, before, comps = p["runs"], p["before"], p["comparisons"]
    keys = p.get("variant_keys", {"lifted": "lifted", "paper": "paper", "implied-label": "implied"})
    names = {v: k for k, v in keys.items()}
    headline = p.get("headline", {}).get("key")
    data = Path(str(p.get("params", {}).get("data", "?"))).name
    moves = p.get("params", {}).get("moves")

    def held(run: str) -> str:
        f = runs[run]
        return (f"{ms(f['heldout_acc_after'])} %{change(p.get('per_seed'), f'{run}_heldout_acc_after', 'heldout_acc_before')}"
                f" (fixed {ms(f['heldout_fixed'], '.1f')}, broke {ms(f['heldout_broken'], '.1f')})")

    base_cell = (f"CE on the moved examples with their true labels, same steps (same information): "
                 f"{held('ce_moved')}; CE only, same steps: {held('ce_only')}")
    out = []
    for key in [k for k in keys.values() if k in runs]:
        c = comps.get(key, {}).get("ce_moved", {})
        tag = " (default)" if key == headline else ""
        out.append(row(
            f"Latent editing{tag}, variant {names.get(key, key)}, {data}, {moves} moves: accuracy on the held-out "
            f"test examples of the moved pairs ({ms(before['heldout_n'], '.0f')} examples, "
            f"{ms(before['heldout_wrong_before'], '.1f')} wrong before), {ms(before['heldout_acc_before'])} % before "
            f"→ after",
            held(key) + (f"; vs same-information baseline {num(c.get('mean'), '+.2f')} ± {num(c.get('sd'))} points, "
                         f"higher on {c.get('higher_on', '?')}/{c.get('seeds', '?')} seeds" if c else ""),
            base_cell, "higher than the same-information baseline on every seed", c.get("beats") if c else None,
            p, file))
    fit = " / ".join(f"{names.get(k, k)} {ms(runs[k]['moved_fixed'], '.1f', ' %')}" for k in keys.values() if k in runs)
    out.append(row(f"Latent editing: moved examples right after (fit: the fine-tune saw them), "
                   f"{ms(before['moved_fixed_before'], '.1f')} % before", fit,
                   f"CE on the moved examples (same information) {ms(runs['ce_moved']['moved_fixed'], '.1f', ' %')}; "
                   f"CE only {ms(runs['ce_only']['moved_fixed'], '.1f', ' %')}", "– (a fit figure)", None, p, file))
    lead = headline or next(iter(k for k in keys.values() if k in runs))
    t_ours, t_base = runs[lead]["test_acc_after"]["mean"], runs["ce_only"]["test_acc_after"]["mean"]
    out.append(row(f"Latent editing: test accuracy, whole test split, {ms(before['test_acc_before'])} % before "
                   f"→ after "
                   f"({names.get(lead, lead)})", ms(runs[lead]["test_acc_after"], unit=" %"),
                   f"CE on the moved examples {ms(runs['ce_moved']['test_acc_after'], unit=' %')}; "
                   f"CE only {ms(runs['ce_only']['test_acc_after'], unit=' %')}",
                   ">= CE only - 0.2 points", None if None in (t_ours, t_base) else t_ours >= t_base - 0.2, p, file))
    if p.get("speed"):
        out += rows_latent_update_speed({**p["speed"], "seeds": p.get("seeds"), "quick": p.get("quick"),
                                         "params": p.get("params")}, file)
    return out


def rows_latent_update_speed(p: dict, file: str) -> list[dict]:
    return [row("Latent editing: Update / the same fine-tune in a bare PyTorch loop",
                f"{num(p['ratio'], '.3f')} ({num(p['ours_s'])} s vs {num(p['reference_s'])} s)",
                "bare hand-written loop, same model, data, steps", f"<= {p.get('target', 1.15)}",
                p["ratio"] <= p.get("target", 1.15), p, file)]


def rows_select_retrain(p: dict, file: str) -> list[dict]:
    runs, before, comps = p["runs"], p["before"], p["comparisons"]

    def held(run: str) -> str:
        f = runs[run]
        return (f"fixed {ms(f['heldout_fixed'], '.1f')}, broke {ms(f['heldout_broken'], '.1f')}; "
                f"pair accuracy {ms(f['heldout_acc_after'])} %"
                f"{change(p.get('per_seed'), f'{run}_heldout_acc_after', 'heldout_acc_before')}")

    c = [comps[b] for b in ("no_fill", "random") if b in comps]
    cmp_txt = "; ".join(f"vs {b}: {num(comps[b]['mean'], '+.2f')} ± {num(comps[b]['sd'])} points, higher on "
                        f"{comps[b]['higher_on']}/{comps[b]['seeds']} seeds"
                        for b in ("no_fill", "random") if b in comps)
    pair = ", ".join(dict.fromkeys("/".join(r["pair"]) for r in p.get("per_seed", [])))
    out = [row(f"Select and retrain ({pair}): held-out test examples of the selected pair "
               f"({ms(before['heldout_n'], '.0f')} examples, {ms(before['heldout_wrong_before'], '.1f')} wrong before, "
               f"{ms(before['heldout_acc_before'])} % right): mistakes fixed, right ones broken, accuracy after",
               f"{held('ours')}; {cmp_txt}",
               f"same selection without random fill, same steps (same information): {held('no_fill')}; "
               f"random training batches, same steps: {held('random')}",
               "higher pair accuracy than both baselines on every seed",
               all(x["beats"] for x in c) if c else None, p, file)]
    out.append(row(f"Select and retrain: selected mistakes fixed (fit: retrained on them; "
                   f"{ms(before['selected_wrong_before'], '.1f')} of {ms(before['selected'], '.1f')} selected "
                   "were wrong)",
                   ms(runs["ours"]["selected_fixed_fraction"], ".1f", " %"),
                   f"no fill {ms(runs['no_fill']['selected_fixed_fraction'], '.1f', ' %')}; "
                   f"random {ms(runs['random']['selected_fixed_fraction'], '.1f', ' %')}", "– (a fit figure)", None,
                   p, file))
    vc = runs["ours"]["val_acc_change"]["mean"]
    out.append(row(f"Select and retrain: validation accuracy change ({ms(before['val_acc_before'])} % before)",
                   ms(runs["ours"]["val_acc_change"], "+.2f", " points"),
                   f"no fill {ms(runs['no_fill']['val_acc_change'], '+.2f')}; "
                   f"random {ms(runs['random']['val_acc_change'], '+.2f')}", "within 1 point",
                   None if vc is None else abs(vc) <= 1, p, file))
    return out


def rows_monitor_overhead(p: dict, file: str) -> list[dict]:
    pr = p.get("probe", {})
    shares = [s for s in pr.get("share", []) if s is not None]
    counts = sorted(pr.get("probes_per_run", [])) or [0]
    span = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    probe = (f"; probe: {pr.get('images')} images, {span} probes per run, "
             f"share of step time {num(max(shares) * 100, '.1f')} % at most "
             f"(budget {num((pr.get('budget') or 0) * 100, '.0f')} %)"
             if shares else "")
    prm = p.get("params", {})
    return [row(f"Training with everything the monitor page attaches (statistics, settle tracker, activation probe, "
                f"reader thread) / bare loop ({prm.get('model')}, {prm.get('data')}, "
                f"{prm.get('epochs_per_run')} epochs "
                f"per run, {prm.get('pairs')} pairs)",
                f"{num(p['ratio'], '.3f')} ({num(p['ours_s'])} s vs {num(p['reference_s'])} s){probe}",
                "bare hand-written PyTorch loop", f"<= {p['target']}", p["ratio"] <= p["target"], p, file)]


def rows_streamed_tsne(p: dict, file: str) -> list[dict]:
    q, refs, prm = p["quality"], p["references"], p.get("params", {})

    def qual(k: str) -> str:
        return (f"trustworthiness {num(q[k]['trustworthiness'], '.3f')}, "
                f"displacement {num(q[k]['displacement'], '.3f')} "
                f"(aligned {num(q[k]['displacement_aligned'], '.3f')})")

    what = f"{prm.get('points')} points, {prm.get('layer')} activations"
    return [
        row(f"Streamed t-SNE: warm update / cold openTSNE layout with the page's settings ({what})",
            f"{num(refs['opentsne_cold']['ratio'], '.3f')} "
            f"({num(p['ours_s'])} s vs {num(refs['opentsne_cold']['s'])} s)",
            refs["opentsne_cold"]["what"], f"<= {p['target']}", refs["opentsne_cold"]["ratio"] <= p["target"], p, file),
        row("Streamed t-SNE: warm update / scikit-learn TSNE (second reference, same run)",
            f"{num(refs['sklearn']['ratio'], '.3f')} ({num(p['ours_s'])} s vs {num(refs['sklearn']['s'])} s)",
            refs["sklearn"]["what"], "–", None, p, file),
        row("Streamed t-SNE: layout quality after one training step (displacement from the layout shown before, "
            "fraction of the radius)", qual("ours"),
            f"cold openTSNE: {qual('opentsne_cold')}; scikit-learn: {qual('sklearn')}", "–", None, p, file),
    ]


def rows_freezing(p: dict, file: str) -> list[dict]:
    by_lr, head = p["by_lr"], p["headline"]
    lr0 = format(head["lr"], "g")
    h = by_lr[lr0]
    prm = p.get("params", {})
    setup = f"{prm.get('model')}, conv1-2 frozen after epoch {prm.get('freeze_after')} of {prm.get('epochs')}"
    tgt = p.get("target", {})
    out = [
        row(f"Layer freezing ({setup}): epoch time after the change / the unfrozen run's same epochs (lr {lr0})",
            ms(h["ratio_vs_nofreeze"], ".3f")
            + (f" ({ms(h['epoch_s_after_freeze'])} s vs {ms(h['epoch_s_after_nofreeze'])} s per epoch)"
               if "epoch_s_after_freeze" in h else ""),  # files from before the absolute times: the ratio alone
            "the same run without freezing, same seeds, in lockstep",
            f"<= {tgt.get('ratio_vs_nofreeze', 0.8)}", h["met"]["ratio_vs_nofreeze"], p, file),
        row(f"Layer freezing: within-run ratio, epochs after / before the change (lr {lr0}; counts any speed-up both "
            f"runs share: the unfrozen run's own after/before is {ms(h['nofreeze_after_before'], '.3f')})",
            ms(h["epoch_time_ratio"], ".3f"), "the same run's epochs before the change", "– (secondary)", None,
            p, file),
    ]
    roles = p.get("lr_roles", {})
    for lr, b in by_lr.items():
        out.append(row(f"Layer freezing: held-out accuracy with freezing, lr {lr} ({roles.get(lr, 'other')})",
                       f"{ms(b['val_acc_freeze'], unit=' %')} (diff {ms(b['acc_diff'], '+.2f')} points)",
                       f"without freezing: {ms(b['val_acc_nofreeze'], unit=' %')}",
                       f"within {tgt.get('acc_diff_abs', 1.0)} point", b["met"]["acc_diff_abs"], p, file))
    return out


ENGINE_NAMES = {"engine": "engine `fit` / bare loop",
                "engine_stats": "engine with per-filter statistics every step / bare loop",
                "frozen": "seed-cnn with conv1-2 frozen / bare loop with the same layers frozen"}


def rows_engine_overhead(p: dict, file: str) -> list[dict]:
    prm = p.get("params", {})
    return [row(f"Engine: {ENGINE_NAMES.get(p['name'], p['name'])} ({prm.get('model')}, {prm.get('data')}, "
                f"{prm.get('pairs')} pairs)",
                f"{num(p['ratio'], '.3f')} ({num(p['ours_s'])} s vs {num(p['reference_s'])} s)",
                "bare hand-written PyTorch loop", f"<= {p['target']}", p["ratio"] <= p["target"], p, file)]


def rows_app_latency(p: dict, file: str) -> list[dict]:
    name = p["name"]
    what = {"cached_start": "`streamlit run` to a usable Home (accuracy, charts drawn, no widget loading), cached base model (median)",
            "first_start": "first start on an empty workspace (base model trains in the background; median)",
            "first_paint": "opening the app to its first text on screen, Chromium (median of the cached starts)"}
    label = what.get(name, f"idle rerun of page {name.removeprefix('idle_rerun_')} (AppTest, median)")
    speed = ((p.get("params") or {}).get("machine_speed") or {}).get("before", {}).get("speed_vs_anchor")
    ours = f"{num(p['ours_s'] * 1000, '.0f')} ms" if p.get("ours_s") is not None else "failed"
    if speed is not None and p.get("ours_s") is not None:  # absolute times depend on how busy the shared machine was
        ours += f" (machine at {num(speed)}x the speed anchor)"
    return [row(f"App: {label}", ours, "– (absolute time)", f"<= {num(p['target'] * 1000, '.0f')} ms", p.get("pass"),
                p, file)]


def rows_generic(p: dict, file: str) -> list[dict]:
    """A speed record in the documented form (name, ours_s, reference_s, ratio, target) of a
    benchmark without a builder here; KeyError for anything else."""
    ratio, target = p["ratio"], p["target"]
    if not isinstance(ratio, (int, float)) or not isinstance(target, (int, float)):
        raise KeyError("ratio/target")
    ref = p.get("reference") or p.get("params", {}).get("reference") or "the reference named in its JSON"
    met = p["pass"] if isinstance(p.get("pass"), bool) else ratio <= target
    return [row(f"{p['name']}: ours / reference (generic row)",
                f"{num(ratio, '.3f')} ({num(p.get('ours_s'))} s vs {num(p.get('reference_s'))} s)",
                str(ref), f"<= {target}", met, p, file)]


def effect_row(p: dict, file: str, what: str) -> dict:
    """The ``"effect"`` record of an effect benchmark: the headline arm against the same-information
    baseline, the random-region control and the oracle, with the gap closed and the targets."""
    e = p["effect"]
    data = str(p.get("data", "?")).replace("../shared/data/", "")

    def gain(g: dict | None) -> str:
        if not g:
            return "–"
        return f"{num(g.get('mean'), '+.2f')} ± {num(g.get('sd'))} (higher on {g.get('higher_on')}/{g.get('seeds')})"

    targets = e.get("targets") or {}
    words = []
    if "over_same_information" in targets:
        words.append(f">= +{targets['over_same_information']:g} over same information")
    if "over_random_region" in targets:
        words.append(f">= +{targets['over_random_region']:g} over random regions")
    if "gap_closed" in targets:
        words.append(f">= {100 * targets['gap_closed']:.0f} % of the gap to the oracle closed")
    oracle = "–" if e.get("oracle") is None else f"{num(e['oracle'])} %"
    gap = "–" if e.get("gap_closed") is None else f"{100 * e['gap_closed']:.0f} %"
    return row(f"{what} ({data}): arm {e['arm']}, bias-conflicting test accuracy, {num(e.get('before'))} % before",
               f"{num(e.get('ours'))} %; {gain(e.get('gain_over_same_information'))} points over same information, "
               f"{gain(e.get('gain_over_random_region'))} over random regions; gap to the oracle closed {gap}",
               f"same information {num(e.get('same_information'))} %; random regions "
               f"{num(e.get('random_region'))} %; oracle (unbiased training split) {oracle}",
               "; ".join(words) or "–", e.get("target_met"), p, file)


def rows_attention_guidance(p: dict, file: str) -> list[dict]:
    """Seed 001's simulated user: every arm against CE on the same images (``effect``), or, in
    files written before the arms, bias-conflicting accuracy per sampler."""
    if "effect" in p:
        prm = p.get("params", {})
        out = [effect_row(p, file, f"Attention feedback, {prm.get('budget')} images ({prm.get('sampler')} sampler)")]
        arms = p.get("arms", {})
        cells = "; ".join(f"{a} {num(v['mean'])} ± {num(v['sd'])}" for a, v in arms.items())
        out.append(row("Attention feedback: every arm's bias-conflicting test accuracy (%)", cells,
                       "same images and steps for every arm", "– (secondary)", None, p, file))
        return out
    prm, per = p.get("params", {}), p["per_sampler"]
    data = str(p.get("data", "?")).replace("../shared/data/", "")
    out = []

    def diverged(name: str, key: str) -> str:
        """Fine-tune rounds stopped by the divergence guard, over the seeds (older files: not recorded)."""
        counts = [s["per_sampler"][name].get(key) for s in p.get("per_seed", []) if name in s.get("per_sampler", {})]
        if not counts or any(c is None for c in counts):
            return ""
        return f"; rounds diverged {sum(counts)} of {len(counts) * prm.get('rounds', 0)}"

    before = p.get("conflicting_acc_before")
    ours_ft, base_ft = prm.get("fine_tune") or {}, prm.get("baseline_fine_tune") or {}
    own_lr = (f", its own lr {base_ft['lr']:g} (ours {ours_ft['lr']:g}, tuned apart)"
              if base_ft.get("lr") is not None and ours_ft.get("lr") is not None and base_ft["lr"] != ours_ft["lr"]
              else "")
    for name in p.get("ranking", list(per)):
        r = per[name]
        vs_before = (f" ({num(r['acc_after'] - before, '+.2f')} points vs before)"
                     if isinstance(before, (int, float)) else "")
        base_aligned = (f"; bias-aligned {num(r['baseline_aligned_acc_after'])} %"
                        if r.get("baseline_aligned_acc_after") is not None else "")
        base_mask = (f"; attention on the object {num(r['baseline_attention_in_mask_after'], '.1f')} %"
                     if r.get("baseline_attention_in_mask_after") is not None else "")
        out.append(row(
            f"Attention clicks ({data}, {prm.get('budget')} images in {prm.get('rounds')} rounds), sampler {name}"
            f"{' (best)' if name == p.get('best_sampler') else ''}: bias-conflicting test accuracy, "
            f"{num(before)} % before",
            f"{num(r['acc_after'])} ± {num(r['acc_after_sd'])} %{vs_before}; {num(r['gain_over_baseline'], '+.2f')} ± "
            f"{num(r.get('gain_over_baseline_sd'))} points over the baseline; attention on the object "
            f"{num(r['attention_in_mask_before'], '.1f')} → {num(r['attention_in_mask_after'], '.1f')} %; "
            f"bias-aligned {num(r['aligned_acc_after'])} %{diverged(name, 'rounds_diverged')}",
            f"CE only on the same images with their labels, same steps{own_lr} (same information): "
            f"{num(r['baseline_acc_after'])} ± {num(r.get('baseline_acc_after_sd'))} %{base_aligned}{base_mask}"
            f"{diverged(name, 'baseline_rounds_diverged')}",
            f">= +{p.get('target_points', 15):g} points (best sampler)",
            (r["gain_over_baseline"] >= p.get("target_points", 15)) if name == p.get("best_sampler") else None,
            p, file))
    return out


def rows_grid_feedback(p: dict, file: str) -> list[dict]:
    """Seed 002's simulated user: bias-conflicting accuracy after training with grid reviews,
    against the same training without feedback and with randomly chosen squares."""
    prm = p.get("params", {})
    lead = []
    if "effect" in p:
        lead = [effect_row(p, file, f"Grid feedback, {num(p.get('images_reviewed'), '.0f')} images reviewed")]
        p = {**p, "target_met": p.get("penalty_target_met")}  # the rows below are the penalty's own
    data = str(p.get("data", "?")).replace("../shared/data/", "")
    size = f", {prm['limit_per_class']} images per class" if prm.get("limit_per_class") else ""

    def acc(run: str, key: str = "conflicting_acc") -> str:
        return f"{num(p[f'{key}_{run}'])} ± {num(p.get(f'{key}_{run}_sd'))} %"

    def gain(g: dict) -> str:
        return (f"{num(g.get('mean'), '+.2f')} ± {num(g.get('sd'))} points, higher on "
                f"{g.get('higher_on', '?')}/{g.get('seeds', '?')} seeds")

    gb, gr = p["gain_over_baseline"], p["gain_over_random_squares"]
    target = p.get("target_points", 10)
    most = p.get("images_reviewed_max")
    met = p.get("target_met")
    if met is not None and most is not None:
        met = bool(met) and most <= 50
    div = p.get("diverged", {})
    out = [row(
        f"Grid feedback ({data}{size}, seed-cnn from scratch, {prm.get('epochs')} epochs, {prm.get('review_k')} "
        f"entropy-sampled mistakes reviewed per epoch end, {num(p.get('images_reviewed'), '.0f')} images and "
        f"{num(p.get('squares_marked'), '.0f')} squares in all): bias-conflicting test accuracy",
        f"{acc('feedback')}; {gain(gb)} over no feedback, {gain(gr)} over random squares",
        f"same training without feedback: {acc('baseline')}; random squares (same images, as many squares): "
        f"{acc('random_squares')}",
        f">= +{target:g} points over both, <= 50 images reviewed", met, p, file)]
    out.append(row(
        "Grid feedback: bias-aligned test accuracy; share of the squared input gradient on the object (test); "
        "reviewed images right after (fit: trained on them)",
        f"{acc('feedback', 'aligned_acc')}; gradient on the object {num(p.get('gradient_in_mask_feedback'), '.1f')} %; "
        f"fit {num(p.get('reviewed_fit_acc_feedback'), '.1f')} %",
        f"no feedback {acc('baseline', 'aligned_acc')}, {num(p.get('gradient_in_mask_baseline'), '.1f')} %, fit "
        f"{num(p.get('reviewed_fit_acc_baseline'), '.1f')} %; random squares {acc('random_squares', 'aligned_acc')}, "
        f"{num(p.get('gradient_in_mask_random_squares'), '.1f')} %, fit "
        f"{num(p.get('reviewed_fit_acc_random_squares'), '.1f')} %"
        + (f"; diverged runs: {div.get('feedback', 0)} / {div.get('baseline', 0)} / {div.get('random_squares', 0)}"
           if div else ""),
        "– (secondary)", None, p, file))
    if p.get("conflicting_acc_reviewed_ce") is not None and p.get("gain_over_reviewed_ce"):
        out.append(row(
            "Grid feedback against a second control, not in the issue: the same reviewed images at the same epoch "
            "ends, their cross-entropy in the penalty's place (no squares; same lambda rule, lambda = share): "
            "bias-conflicting test accuracy",
            f"{acc('feedback')}; {gain(p['gain_over_reviewed_ce'])} over this control",
            f"reviewed images' CE, no squares: {acc('reviewed_ce')}; fit {num(p.get('reviewed_fit_acc_reviewed_ce'), '.1f')} %",
            "– (secondary: what fitting the reviewed mistakes alone does)", None, p, file))
    return lead + out


def rows_grid_penalty_cost(p: dict, file: str) -> list[dict]:
    prm = p.get("params", {})
    return [row(f"Grid feedback: training steps with the penalty over R = {prm.get('reviewed_images')} reviewed images "
                f"({prm.get('per_step')} per step) / the same steps without it ({prm.get('model')}, batch "
                f"{prm.get('batch_size')}, {prm.get('steps')} steps, {prm.get('pairs')} pairs)",
                f"{num(p['ratio'], '.3f')} ({num(p['ours_s'])} s vs {num(p['reference_s'])} s)",
                "the same engine steps, CE only", f"<= {p.get('target', 1.5)}", p["ratio"] <= p.get("target", 1.5),
                p, file)]


def rows_attention_page_run(p: dict, file: str) -> list[dict]:
    """The timing row (every set's seconds when the file has ``per_set``), then one row per
    bundled set: the page's version against the same-information baseline (files written
    before the sets have the timing row only)."""
    prm = p.get("params", {})
    per_set = p.get("per_set") or {}
    if not per_set:
        return [row(f"Attention page, simulated user in Chromium: {prm.get('images')} images annotated "
                    f"({prm.get('clicks')} clicks) and fine-tuned, START to new version",
                    f"{num(p['ours_s'], '.0f')} s; page's test-mode numbers "
                    f"{'equal' if p.get('numbers_equal') else '**differ from**'}"
                    f" the library's ({p.get('page_numbers')} vs {p.get('library_numbers')})",
                    "– (absolute time)", f"< {num(p['target'], '.0f')} s", p.get("pass") and p.get("numbers_equal"),
                    p, file)]
    sets = ", ".join(per_set)
    times = "; ".join(f"{k} {num(v.get('seconds'), '.0f')} s ({v.get('images')} images, {v.get('clicks')} clicks)"
                      for k, v in per_set.items())
    differ = [k for k, v in per_set.items() if not v.get("numbers_equal")]
    same = ("equal the library's on every set" if not differ
            else f"**differ from** the library's on {', '.join(differ)}")
    out = [row(f"Attention page, simulated user in Chromium, one round per bundled set ({sets}): images annotated "
               "and fine-tuned, START to new version",
               f"{times}; page's test-mode numbers {same}", "– (absolute time)",
               f"< {num(p['target'], '.0f')} s on every set", p.get("pass") and p.get("numbers_equal"), p, file)]
    target = p.get("target_points", 5)
    lr = prm.get("same_information_lr")
    for k, v in per_set.items():
        gain = v.get("gain_over_same_information")
        st = v.get("settings") or {}
        rehearsal = int(st.get("rehearsal") or 0)
        how = f"{v.get('images')} images"
        if st:
            how = f"{st.get('sampler')} sampler, {how}, lr {st.get('lr')}, {st.get('epochs')} epochs"
            how += f", {rehearsal} rehearsal images" if rehearsal else ""
        same = ", the same rehearsal images" if rehearsal else ""
        out.append(row(f"Attention page demo ({k}, the page's defaults: {how}): bias-conflicting test accuracy, "
                       f"{num(v.get('before'), '.1f')} % before",
                       f"{num(v.get('after'), '.1f')} %; {num(gain, '+.1f')} points over same information",
                       f"same information (CE alone on the annotations the page stored{same}, same epochs and batch"
                       f"{f', lr {lr:g}' if lr is not None else ''}): {num(v.get('same_information'), '.1f')} %",
                       f">= +{target:g} points over same information",
                       None if gain is None else gain >= target, p, file))
    return out


def rows_gradcam(p: dict, file: str) -> list[dict]:
    prm = p.get("params", {})
    if p["name"] == "gmm_pool_scoring":
        return [row(f"GMM sampler scoring {prm.get('pool')} pool images (Grad-CAMs included) / one forward+backward "
                    f"pass over them ({prm.get('model')})",
                    f"{num(p['ratio'], '.3f')} ({num(p['ours_s'])} s vs {num(p['reference_s'])} s)",
                    "one forward+backward pass (a training step without the update)", f"<= {p['target']}",
                    p["ratio"] <= p["target"], p, file)]
    floor = (f"; the forward pass alone, without autograd: {num(p['floor_ratio'], '.3f')}, "
             "a pass every Grad-CAM must make") if "floor_ratio" in p else ""
    return [row(f"Grad-CAM, {prm.get('model')}, batch {prm.get('batch')}: ours / pytorch-grad-cam",
                f"{num(p['ratio'], '.3f')} ({num(p['ours_s'], '.3f')} s vs {num(p['reference_s'], '.3f')} s{floor})",
                "pytorch-grad-cam 1.5.7, same model, layer, images and targets, same output",
                f"<= {p['target']}", p["ratio"] <= p["target"], p, file)]


def rows_compile_speed(p: dict, file: str) -> list[dict]:
    prm = p.get("params", {})
    extra = (f"; compile {num(prm['compile_s'], '.1f')} s once, not counted, shorter when an earlier run left "
             "inductor's cache warm") if "compile_s" in prm else ""
    return [row(f"Training step, {prm.get('model')}, batch {prm.get('batch_size')}: {prm.get('ours')} / "
                f"{prm.get('reference')} (a ratio < 1 is a speed-up; decides the default)",
                f"{num(p['ratio'], '.3f')} ({num(p['ours_s'], '.3f')} s vs {num(p['reference_s'], '.3f')} s{extra})",
                f"the same steps, {prm.get('reference')}", "– (none set)", None, p, file)]


def rows_long_session(p: dict, file: str) -> list[dict]:
    out = []
    for r in p["rows"]:
        if "ours_mb" in r:
            prm = r.get("params", {})
            out.append(row(f"Long session: server memory growth over {num(prm.get('minutes'), '.0f')} min of monitored "
                           f"training with the Training monitor open ({prm.get('steps')} steps)",
                           f"{num(r['ours_mb'], '+.0f')} MB ({num(prm.get('rss_start_mb'), '.0f')} → "
                           f"{num(prm.get('rss_end_mb'), '.0f')} MB, max {num(prm.get('rss_max_mb'), '.0f')})",
                           "– (absolute)", f"<= +{num(r['target_mb'], '.0f')} MB", r.get("pass"), p, file))
        else:
            out.append(row(f"Long session: Training monitor rerun, {r.get('params', {}).get('while')}",
                           f"{num(r['ours_s'] * 1000, '.0f')} ms", "– (absolute time, AppTest full rerun)",
                           f"<= {num(r['target'] * 1000, '.0f')} ms", r.get("pass"), p, file))
    return out


def rows_study_load(p: dict, file: str) -> list[dict]:
    prm, t, checks = p["params"], p["timing"], p["checks"]
    speed = (prm.get("machine_speed") or {}).get("before", {}).get("speed_vs_anchor")
    who = (f"{prm['participants']} participants in {prm['participants']} browser contexts, {prm['budget']} images "
           f"each + a {prm['epochs']}-epoch fine-tune, server SIGKILLed and restarted mid-run")
    on = f"; machine at {num(speed)}x the speed anchor" if speed is not None else ""
    failed = [k for k, v in checks.items() if not v]
    return [
        row(f"Study load: page response, 95th percentile while training jobs ran ({who})",
            f"{num(t['busy']['p95_s'])} s (median {num(t['busy']['p50_s'])} s, max {num(t['busy']['max_s'])} s, "
            f"{t['busy']['n']} gestures{on})", "– (absolute time)", "– (the issue sets none)", None, p, file),
        row(f"Study load: peak server memory ({who})",
            f"{num(p['peak_rss_mb'], '.0f')} MB", "– (absolute)", "–", None, p, file),
        row(f"Study load: checks ({', '.join(checks)})",
            "all hold" if not failed else f"failed: {', '.join(failed)}", "–", "all hold", not failed, p, file),
    ]


BUILDERS: dict[str, Callable[[dict, str], list[dict]]] = {
    "study_load": rows_study_load,
    "attention_guidance": rows_attention_guidance,
    "attention_page_run": rows_attention_page_run,
    "grid_feedback": rows_grid_feedback,
    "grid_penalty_cost": rows_grid_penalty_cost,
    "gradcam_seed-cnn": rows_gradcam, "gradcam_vgg6": rows_gradcam, "gradcam_resnet18": rows_gradcam,
    "gmm_pool_scoring": rows_gradcam,
    "long_session": rows_long_session,
    "latent_editing": rows_latent_editing,
    "latent_update_speed": rows_latent_update_speed,
    "select_retrain": rows_select_retrain,
    "monitor_overhead": rows_monitor_overhead,
    "streamed_tsne": rows_streamed_tsne,
    "freezing": rows_freezing,
    "engine": rows_engine_overhead, "engine_stats": rows_engine_overhead, "frozen": rows_engine_overhead,
}
SOURCE = {"engine": "engine_overhead", "engine_stats": "engine_overhead", "frozen": "engine_overhead",
          "gradcam_seed-cnn": "gradcam_speed", "gradcam_vgg6": "gradcam_speed", "gradcam_resnet18": "gradcam_speed",
          "gmm_pool_scoring": "gradcam_speed"}


def builder(name: str) -> tuple[str, Callable[[dict, str], list[dict]]] | None:
    if name in BUILDERS:
        return SOURCE.get(name, name), BUILDERS[name]
    if name.startswith(("compile_", "bf16_")):
        return "compile_speed", rows_compile_speed
    if name.startswith("idle_rerun_") or name in ("cached_start", "first_start", "first_paint"):
        return "app_latency", rows_app_latency
    return None


# ----------------------------------------------------------------------------- the report
def load(folder: Path) -> list[tuple[str, dict]]:
    """(file name, payload) for every benchmark record in ``folder``'s JSON files (a file may
    hold one record or a list of them)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"report: cannot read {path}: {exc}") from exc
        for rec in data if isinstance(data, list) else [data]:
            if isinstance(rec, dict) and "name" in rec:
                out.append((path.name, rec))
    return out


def code_dirty(prov: dict, file: str) -> bool | None:
    """Whether the working tree differed from the commit in what ``file``'s figures depend on
    (``_runs.dirty_code``); a changed path outside it (the run's own log in ``results/``) does
    not count. The recorded flag when the benchmark or its commit is unknown here."""
    script, commit, paths = scripts_by_file().get(file), prov.get("git_commit"), prov.get("git_dirty_paths")
    if not prov.get("git_dirty") or not script or not commit or not paths or len(paths) >= 50 \
            or benchmark_code(script, commit) is None:
        return prov.get("git_dirty")
    return bool(dirty_code(script, commit, paths))


def _note_provenance(provs: dict[tuple, list[str]], rec: dict, file: str) -> None:
    prov = rec.get("provenance") or {}
    key = (code_dirty(prov, file), prov.get("device"), prov.get("cuda"), prov.get("torch"),
           prov.get("python"), prov.get("cpus"), prov.get("torch_threads"))
    provs.setdefault(key, [])
    if (file, prov.get("git_commit")) not in provs[key]:
        provs[key].append((file, prov.get("git_commit")))


def scripts_by_file() -> dict[str, str]:
    """JSON file name -> the benchmark script that writes it, from :data:`COMMANDS`."""
    out = {}
    for cmd in COMMANDS.values():
        script = script_of(cmd)
        for w in cmd.split():
            if w.endswith(".json") and script:
                out[Path(w).name] = script
    return out


def one_run_notes(files: list[tuple[str, dict]]) -> list[str]:
    """Whether ``files`` (name, provenance) are one run: every figure measured with the code it
    depends on as it is at the newest of their commits (``_runs.benchmark_code``, so a run
    resumed across commits that changed only the results, tests, the README, or another
    benchmark's script is one run). Files whose commit is not in this repository are told
    apart by ``git_code`` (the committed ``benchmarks/`` tree and the product) or their commit."""
    scripts = scripts_by_file()
    known, unknown = [], {}
    for file, prov in files:
        commit, script = prov.get("git_commit"), scripts.get(file)
        code = benchmark_code(script, commit) if script and commit else None
        if code is not None:
            known.append((file, script, commit, code))
        else:
            unknown.setdefault(prov.get("git_code") or commit, []).append(file)
    notes = []
    if known:
        latest = max({c for _, _, c, _ in known}, key=lambda c: commit_time(c) or 0)
        stale = [f for f, script, _, code in known if code != benchmark_code(script, latest)]
        if stale:
            notes.append(f"{', '.join(f'`{f}`' for f in stale)} measured other code than the files of "
                         f"commit `{latest[:10]}` (product, helpers or their own script): not one run")
    if len(unknown) > 1 or (unknown and known):
        n = len(unknown) + (1 if known else 0)
        notes.append(f"the files come from {n} different commits of the measured code: not one run")
    return notes


def json_name(command: str) -> str:
    """The name of the JSON file README command ``command`` writes (its ``--json`` argument)."""
    argv = shlex.split(COMMANDS[command])  # as run_all.py splits it
    return Path(argv[argv.index("--json") + 1]).name


def build(folder: Path, *, display: str | None = None) -> dict:
    """Rows, provenance lines and notes for the JSON files in ``folder``."""
    records = load(folder)
    rows, seen, notes, quick = [], set(), [], False  # seen: the file names that gave rows
    provs: dict[tuple, list[str]] = {}
    for file, rec in records:
        found = builder(rec["name"])
        if found is None:
            try:
                rows += rows_generic(rec, file)
            except (KeyError, TypeError):
                notes.append(f"`{file}`: benchmark {rec['name']!r} has no row builder in benchmarks/report.py, "
                             "left out")
                continue
            seen.add(file)
            quick |= bool(rec.get("quick"))
            _note_provenance(provs, rec, file)
            continue
        source, make = found
        try:
            rows += make(rec, file)
        except (KeyError, TypeError) as exc:
            notes.append(f"`{file}`: {rec['name']} in an older or unknown format ({exc.__class__.__name__}: {exc}), "
                         "left out: run the benchmark again")
            continue
        seen.add(file)
        quick |= bool(rec.get("quick"))
        _note_provenance(provs, rec, file)
    prov_lines, files = [], []
    for (dirty, device, cuda, torch_v, py, cpus, threads), entries in provs.items():
        where = f"{device or '?'}" + (f" ({cuda})" if cuda and str(device).startswith("cuda") else "")
        # oldest first (commit time where the commit is here), so "first, ..., last" spans the run
        full = sorted({c or "unknown" for _, c in entries}, key=lambda c: (commit_time(c) or 0, c))
        commits = list(dict.fromkeys(c[:10] for c in full))
        named = (f"commit `{commits[0]}`" if len(commits) == 1 else
                 f"commits {', '.join(f'`{c}`' for c in commits)}" if len(commits) <= 3 else
                 f"{len(commits)} commits (`{commits[0]}`, ..., `{commits[-1]}`)")
        prov_lines.append(
            named
            + f"{' (working tree dirty in the measured code: see the JSON for the paths)' if dirty else ''}, "
            + f"{where}, {cpus} CPUs, {threads} torch threads, torch {torch_v}, Python {py}: "
            + ", ".join(dict.fromkeys(f"`{f}`" for f, _ in entries)))
    for file, rec in records:
        if (rec.get("provenance") or {}) and file not in dict(files):
            files.append((file, rec["provenance"]))
    notes += one_run_notes(files)
    # by file, not by record name: the three grid (and attention) benchmarks write records of one name
    missing = [n for n in COMMANDS if json_name(n) not in seen]
    return {"rows": rows, "provenance": prov_lines, "notes": notes, "missing": missing, "quick": quick,
            "folder": display or str(folder)}


def markdown(rep: dict) -> str:
    lines = [f"Generated by `python benchmarks/report.py {rep['folder']} --write-readme` from the benchmarks' JSON "
             "files; do not edit by hand.", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for r in rep["rows"]:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "\\|").replace("\n", " ") for c in COLUMNS) + " |")
    if not rep["rows"]:
        lines.append("| no benchmark JSON found | | | | | | |")
    lines.append("")
    missed = []
    for r in rep["rows"]:
        if r["met"] == "**no**":
            head, _, tail = r["figure"].partition(": ")  # not a bare ":", which sources contain (biased-digits:PATH)
            missed.append(head if len(head) >= 25 or not tail else f"{head}: {tail.split('(')[0].strip()}")
    if missed:
        lines.append("Targets not met in this run: " + "; ".join(missed) + ".")
        lines.append("")
    if rep["provenance"]:
        lines.append("Provenance: " + "; ".join(rep["provenance"]) + ".")
        lines.append("")
    for n in rep["notes"]:
        lines.append(f"Note: {n}.")
    if rep["missing"]:
        lines.append("Not in this run (no JSON file): " + "; ".join(f"{n} (`{COMMANDS[n]}`)" for n in rep["missing"])
                     + ".")
    return "\n".join(lines).rstrip() + "\n"


def splice(readme: str, block: str) -> str:
    """``readme`` with ``block`` between the result markers (ValueError when they are missing)."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"the README needs exactly one {START} followed by one {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="bench-results",
                    help="folder with the run's JSON files (run_all.py's: results/run-<code>)")
    ap.add_argument("--write-readme", action="store_true", help="splice the table into the README between the markers")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--allow-quick", action="store_true", help="let --write-readme take files from --quick runs")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"report: no folder {folder}", file=sys.stderr)
        return 2
    rep = build(folder, display=args.folder)
    block = markdown(rep)
    print(block, end="")
    if args.write_readme:
        if rep["quick"] and not args.allow_quick:
            print("report: --quick files are smoke tests, not results; README left as it was "
                  "(--allow-quick to write anyway)", file=sys.stderr)
            return 1
        path = Path(args.readme)
        try:
            path.write_text(splice(path.read_text(), block))
        except ValueError as exc:
            print(f"report: {path}: {exc}", file=sys.stderr)
            return 1
        print(f"report: results written into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
