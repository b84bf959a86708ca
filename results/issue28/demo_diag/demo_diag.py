"""Diagnostic: the Attention page's first round (16 images, page defaults) on the bundled sets, via the library.

    python results/issue28/demo_diag/demo_diag.py SOURCES SEEDS [JSON]   # e.g. decoy-digits 100,101,102

Base model with the app's base settings (seed 0), the 16 candidates the page's gmm sampler picks in
round 1, the simulated user's clicks, then one fine-tune per arm and seed from a copy of the base;
bias-conflicting test accuracy and validation accuracy (percent) per arm and seed.
"""
import copy, dataclasses, json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import train_base_model, version_metrics
from core.feedback.attention.workflow import PageSettings, select_candidates, annotate_like_a_person, fine_tune, bias_report

sources = sys.argv[1].split(",")
seeds = [int(s) for s in sys.argv[2].split(",")]
arms = {
    "default": {},
    "ce_lr001": dict(guidance=False, lr=0.001),
    "ce_lr01": dict(guidance=False),
    "att_lr003": dict(lr=0.003),
    "att_lr001": dict(lr=0.001),
    "att_cex": dict(counterexamples=True),
    "att_cex_lr003": dict(counterexamples=True, lr=0.003),
    "cex_lr003": dict(counterexamples=True, guidance=False, lr=0.003),
    "att_ep10": dict(epochs=10),
}
out = {}
for src in sources:
    data = load_dataset(src)
    t = time.time()
    model, res = train_base_model(data, "seed-cnn", config=base_config(src, data, 0))
    model.eval()
    base = bias_report(model, data)
    print(src, "base", {k: round(v, 1) for k, v in base.items() if v is not None}, "val",
          round(100 * version_metrics(model, data)["val_acc"], 1), res.message, round(time.time() - t), flush=True)
    ids = select_candidates(model, data, "gmm", 16, seed=1)
    anns = annotate_like_a_person(model, data, ids)
    out[src] = {"base": base, "base_val_acc": version_metrics(model, data)["val_acc"], "arms": {}, "val_acc": {}}
    for name, kw in arms.items():
        accs, vals = [], []
        for s in seeds:
            ps = PageSettings(**{k: v for k, v in kw.items() if k != "guidance"})
            ft = ps.fine_tune(seed=s, device="cpu")
            m = copy.deepcopy(model)
            fine_tune(m, data, anns, ft, guidance=kw.get("guidance", True), counterexamples=ps.counterexample_settings(s))
            accs.append(bias_report(m.eval(), data)["test_acc"])
            vals.append(100 * version_metrics(m, data)["val_acc"])
        out[src]["arms"][name] = accs
        out[src]["val_acc"][name] = vals
        print(src, name, [round(a, 1) for a in accs], round(sum(accs) / len(accs), 2), "val", [round(v, 1) for v in vals],
              flush=True)
with open(sys.argv[3] if len(sys.argv) > 3 else f"demo_diag_{'_'.join(sources)}.json", "w") as fh:
    json.dump(out, fh, indent=1)
