import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import core.data.shortcuts as sc
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import train_base_model
from core.feedback.attention.workflow import bias_report
for side in [int(s) for s in sys.argv[1].split(",")]:
    sc.DECOY_SIDE = side
    for seed in (0, 1):
        data = load_dataset("decoy-digits")
        model, res = train_base_model(data, "seed-cnn", config=base_config("decoy-digits", data, seed))
        r = bias_report(model.eval(), data)
        print(side, seed, {k: round(v, 1) for k, v in r.items() if v is not None}, flush=True)
