"""Tuning: the Attention page's round fine-tune (lr and rehearsal images) on the bundled shortcut sets.

    python results/issue28/rehearsal/round_tuning.py SOURCE BASE_SEEDS [JSON]   # e.g. decoy-digits 1,2

For each base model seed (the app's base model is seed 0, the demo's; tune on others): the base
with the app's base settings, the 16 candidates the page's gmm sampler picks in round 1, the
simulated user's clicks, then one fine-tune per arm and fine-tune seed 100-101 from a copy of the
base, through the library (``fine_tune`` with ``PageSettings(...).fine_tune``, as the page builds it).
Arms: the attention loss ("att") and CE alone ("ce", the same-information baseline) at lr 0.01
(the paper's) and 0.003, each without and with 112 rehearsal images. Prints and writes the
bias-conflicting test accuracy and the validation accuracy (percent).
"""
import copy, json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import train_base_model, version_metrics
from core.feedback.attention.workflow import PageSettings, select_candidates, annotate_like_a_person, fine_tune, bias_report

src = sys.argv[1]
data = load_dataset(src)
out = {"source": src, "runs": []}
for bs in [int(s) for s in sys.argv[2].split(",")]:
    model, _ = train_base_model(data, "seed-cnn", config=base_config(src, data, bs))
    model.eval()
    base = {"test": bias_report(model, data)["test_acc"], "val": 100 * version_metrics(model, data)["val_acc"]}
    print(src, "base seed", bs, {k: round(v, 2) for k, v in base.items()}, flush=True)
    anns = annotate_like_a_person(model, data, select_candidates(model, data, "gmm", 16, seed=1))
    for rehearsal in (0, 112):
        for guidance in (True, False):
            for lr in (0.01, 0.003):
                for seed in (100, 101):
                    ps = PageSettings(lr=lr, rehearsal=rehearsal)
                    m = copy.deepcopy(model)
                    fine_tune(m, data, anns, ps.fine_tune(seed=seed, device="cpu"), guidance=guidance)
                    row = {"base_seed": bs, "base": base, "arm": "att" if guidance else "ce", "lr": lr,
                           "rehearsal": rehearsal, "seed": seed, "test": bias_report(m.eval(), data)["test_acc"],
                           "val": 100 * version_metrics(m, data)["val_acc"]}
                    out["runs"].append(row)
                    print(" ", row["arm"], lr, "rehearsal", rehearsal, "seed", seed, round(row["test"], 2),
                          "val", round(row["val"], 1), flush=True)
Path(sys.argv[3] if len(sys.argv) > 3 else f"round_tuning_{src}.json").write_text(json.dumps(out, indent=1))
