"""Seconds to build the counterexample term for 256 annotations (k 4) on colour MNIST; run from the repository root:

    python results/issue28/counterexample_term_build/build_time.py
"""
import sys, time, numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
torch.set_num_threads(2)
from core.data import load_dataset
from core.feedback.attention.loss import AttentionAnnotation
from core.feedback.counterexamples import CounterexampleSettings, counterexample_term
data = load_dataset("biased-digits:../shared/data/mnist?rho=0.997")
rng = np.random.default_rng(0)
ids = data.ids("pool")[:256]
anns = [AttentionAnnotation.from_masks(int(i), int(data.labels[i]), negative=rng.random((28, 28)) > 0.7) for i in ids]
t = time.perf_counter(); term = counterexample_term(data, anns, CounterexampleSettings(k=4)); dt = time.perf_counter() - t
print(f"{len(data.ids('train'))} donors, {len(term)} copies, {dt:.2f} s, checksum {float(term._x.sum()):.4f}")
