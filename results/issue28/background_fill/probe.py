"""Probe: the "background" counterexample fill against the "donor" fill on the page's first round.

    python results/issue28/background_fill/probe.py SOURCES SEEDS [JSON]   # e.g. biased-digits,decoy-digits 100,101,102

Same round as results/issue28/demo_diag/demo_diag.py (app base model, the page's 16 gmm
candidates, the simulated user's clicks), page defaults otherwise; one fine-tune per arm and seed.
Bias-conflicting test accuracy and validation accuracy (percent). Tuning seeds only (100-102).
"""
import copy, dataclasses, json, sys, time
import torch
torch.set_num_threads(2)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import train_base_model, version_metrics
from core.feedback.attention.workflow import PageSettings, select_candidates, annotate_like_a_person, fine_tune, bias_report

sources = sys.argv[1].split(",")
seeds = [int(s) for s in sys.argv[2].split(",")]
arms = {  # name: (guidance, counterexamples on, fill)
    "same_information": (False, False, "donor"),
    "page_default": (True, None, "donor"),
    "att_cex_donor": (True, True, "donor"),
    "att_cex_background": (True, True, "background"),
    "cex_background": (False, True, "background"),
}
out = {}
for src in sources:
    data = load_dataset(src)
    t = time.time()
    model, res = train_base_model(data, "seed-cnn", config=base_config(src, data, 0))
    model.eval()
    base = bias_report(model, data)
    print(src, "base", {k: round(v, 1) for k, v in base.items() if v is not None}, "val",
          round(100 * version_metrics(model, data)["val_acc"], 1), round(time.time() - t), "s", flush=True)
    ids = select_candidates(model, data, "gmm", 16, seed=1)
    anns = annotate_like_a_person(model, data, ids)
    out[src] = {"base": base, "base_val_acc": version_metrics(model, data)["val_acc"], "arms": {}, "val_acc": {}}
    for name, (guidance, cex, fill) in arms.items():
        accs, vals = [], []
        for s in seeds:
            ps = PageSettings() if cex is None else PageSettings(counterexamples=cex)
            cs = dataclasses.replace(ps.counterexample_settings(s), fill=fill)
            m = copy.deepcopy(model)
            fine_tune(m, data, anns, ps.fine_tune(seed=s, device="cpu"), guidance=guidance, counterexamples=cs)
            accs.append(bias_report(m.eval(), data)["test_acc"])
            vals.append(100 * version_metrics(m, data)["val_acc"])
        out[src]["arms"][name] = accs
        out[src]["val_acc"][name] = vals
        print(src, name, [round(a, 1) for a in accs], round(sum(accs) / len(accs), 2), "val",
              [round(v, 1) for v in vals], flush=True)
with open(sys.argv[3] if len(sys.argv) > 3 else "probe.json", "w") as fh:
    json.dump(out, fh, indent=1)
