"""FINE-TUNE with counterexamples on 16 images through the page's path (Workbench.start_training via
core.feedback.attention.workflow.start_fine_tune), bundled biased digits, the page's defaults with counterexamples on."""
import json, sys, time, tempfile, dataclasses, torch
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from core.data import load_dataset
from core.session.base_models import base_config
from core.session.workbench import Workbench, train_base_model
from core.session.store import Store
from core.feedback.attention.workflow import PageSettings, select_candidates, annotate_like_a_person, without_masks, start_fine_tune, KIND, ATTENTION
src = 'biased-digits'; data = load_dataset(src)
base, _ = train_base_model(data, 'seed-cnn', config=base_config(src, data))
wb = Workbench.create(Store(tempfile.mkdtemp()), data, src, base)
ps = dataclasses.replace(PageSettings(), counterexamples=True)
ids = select_candidates(wb.model, data, ps.sampler, 16, exclude=without_masks(data).tolist(), seed=1)
anns = annotate_like_a_person(wb.model, data, ids)
wb.replace_annotations(KIND, [ATTENTION.to_payload(a) for a in anns])
t = time.perf_counter(); job = start_fine_tune(wb, ps); job.wait(600); s = time.perf_counter() - t
rec = {"name": "counterexample_fine_tune_seconds", "seconds": s, "target_s": 60, "pass": s <= 60, "status": job.status,
       "threads": torch.get_num_threads(),
       "images": len(anns), "message": job.message or job.error, "new_version": wb.current_version, "settings": dataclasses.asdict(ps)}
print(json.dumps(rec)); json.dump(rec, open(sys.argv[1], 'w'), indent=1)
