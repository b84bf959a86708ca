"""Probe that came before core.feedback.rehearsal_ids (it patches fine_tune_plan to add N training rows).

    python results/issue28/rehearsal/probes/replay.py decoy-digits fixed|random BASE_SEEDS LRS REHEARSALS

"fixed" puts the decoy square in the top-left corner (as fixed.py). Figures printed, not kept;
the product's rehearsal is measured by ../round_tuning.py.
"""
import copy, sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
import core.data.shortcuts as sc
import core.feedback.attention.workflow as W
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import train_base_model, version_metrics
from core.feedback.attention.workflow import PageSettings, select_candidates, annotate_like_a_person, bias_report
src = sys.argv[1]
if sys.argv[2] == "fixed":
    orig = sc.corner_masks
    sc.corner_masks = lambda h, w: orig(h, w)[:1].expand(4, -1, -1).clone()
data = load_dataset(src)
REPLAY = {"n": 0}
orig_plan = W.fine_tune_plan
def plan(data, annotations, settings=W.FineTuneSettings(), **kw):
    p = orig_plan(data, annotations, settings, **kw)
    n = REPLAY["n"]
    if n:
        g = torch.Generator().manual_seed(settings.train.seed)
        tr = torch.as_tensor(data.ids("train"))
        extra = tr[torch.randperm(len(tr), generator=g)[:n]]
        ids = torch.cat([p["train_ids"], extra])
        p["train"] = (data.images[ids], data.labels[ids]); p["train_ids"] = ids
    return p
W.fine_tune_plan = plan
arms = {"ce": dict(guidance=False), "att": {}, "cex": dict(guidance=False, counterexamples=True), "att_cex": dict(counterexamples=True)}
for bs in [int(s) for s in sys.argv[3].split(",")]:
    model, res = train_base_model(data, "seed-cnn", config=base_config(src, data, bs)); model.eval()
    print(src, sys.argv[2], bs, "base", round(bias_report(model, data)["test_acc"], 2), round(100*version_metrics(model, data)["val_acc"], 1), flush=True)
    ids = select_candidates(model, data, "gmm", 16, seed=1)
    anns = annotate_like_a_person(model, data, ids)
    for n in [int(x) for x in sys.argv[5].split(",")]:
        REPLAY["n"] = n
        for name, kw in arms.items():
            for lr in [float(x) for x in sys.argv[4].split(",")]:
                ps = PageSettings(lr=lr, rehearsal=0, **{k: v for k, v in kw.items() if k != "guidance"})
                accs = []
                for s in (100, 101):
                    m = copy.deepcopy(model)
                    W.fine_tune(m, data, anns, ps.fine_tune(seed=s, device="cpu"), guidance=kw.get("guidance", True), counterexamples=ps.counterexample_settings(s))
                    accs.append(round(bias_report(m.eval(), data)["test_acc"], 1))
                print(" replay", n, name, lr, accs, "val", round(100*version_metrics(m, data)["val_acc"], 1), flush=True)
