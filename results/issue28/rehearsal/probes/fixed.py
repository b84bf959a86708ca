"""Probe (not the product): the bundled decoy digits with the square always in the top-left corner.

    python results/issue28/rehearsal/probes/fixed.py 4,6   # square sides

Base-model bias-conflicting and aligned accuracy, base seeds 0 and 1. Figures printed, not kept.
"""
import sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
import core.data.shortcuts as sc
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import train_base_model
from core.feedback.attention.workflow import bias_report
orig = sc.corner_masks
def fixed(h, w):
    m = orig(h, w); return m[:1].expand(4, -1, -1).clone()
sc.corner_masks = fixed
for side in [int(s) for s in sys.argv[1].split(",")]:
    sc.DECOY_SIDE = side
    data = load_dataset("decoy-digits")
    for seed in (0, 1):
        model, res = train_base_model(data, "seed-cnn", config=base_config("decoy-digits", data, seed))
        r = bias_report(model.eval(), data)
        print("fixed corner", side, seed, {k: round(v, 1) for k, v in r.items() if v is not None}, flush=True)
