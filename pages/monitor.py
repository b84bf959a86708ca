"""Training monitor (seed 003, ReVACNN): watch the model train live, look inside its layers,
embed its filters or activations with trails, and retrain on a selection of confused points."""
from __future__ import annotations

import copy
import time

import numpy as np
import streamlit as st
import torch

from app.monitor_plots import embedding_figure, grad_heatmap_figure, layer_bars_figure, live_figure
from app.monitor_widgets import (PROBE_N, EmbeddingWait, current_monitors, probe_caption, probe_sample,
                                 retrain_report_panel, selection_panel, training_controls)
from app.state import current_workbench
from app.widgets import live_job, to_pil
from core.monitor.embed import EmbeddingStream, filter_vectors, layer_activations
from core.engine import predict
from core.feedback.selection.loss import KIND as SELECTION
from core.session.jobs import Job
from core.monitor.stats import activation_maps, watched_layers

wb = current_workbench()
ss = st.session_state
data = wb.data
classes = data.classes
LAYERS = list(watched_layers(wb.model))

if ss.get("mon-wb") != wb.id:  # first visit, or another workbench: start clean, load from disk
    for k in [k for k in ss if str(k).startswith("mon-")]:
        del ss[k]
    ss["mon-wb"] = wb.id
    ss["mon-selected"] = [a.example_id for a in wb.annotations(SELECTION)]

st.title("Training monitor")
st.caption("Train the current model in the background and watch it: loss and accuracy, per-layer statistics, "
           "and embeddings of filters or activations that move as it learns (Chung et al., ReVACNN, seed 003). "
           "Select confused points in the activation embedding and retrain on them.")

training_controls(wb, "mon", probe_layer=ss.get("mon-emb-layer"), probe_interval_s=ss.get("mon-emb-every"),
                  probe_count=ss.get("mon-emb-n") if ss.get("mon-emb-what", "activations") == "activations" else None)
view_name = st.segmented_control("View", ["Curves", "Network", "Embedding"], default="Curves", key="mon-view",
                                 label_visibility="collapsed") or "Curves"

sample_ids, sample_x, sample_y = probe_sample(wb, PROBE_N)


# ---------------------------------------------------------------- network view
def live_model(job: Job | None) -> torch.nn.Module:
    """The model as it is now: a scratch copy with the latest weights the training thread
    published while a job runs (never the training copy itself), else the current version."""
    snap = None
    if job is not None and job.running:
        job.request_weights()  # a fresh snapshot at the training thread's next step, for the next redraw
        snap = job.weights()
    if snap is None:
        return wb.model
    step, state = snap
    cached = ss.get("mon-live-model")
    if cached is not None and cached[0] == (job.uid, step):
        return cached[1]
    scratch = copy.deepcopy(wb.model)
    scratch.load_state_dict(state)
    ss["mon-live-model"] = ((job.uid, step), scratch)
    return scratch


def draw_network(job: Job | None, mons) -> None:
    snap = mons.stats.snapshot() if mons.stats is not None else None
    with st.container(key="mon-network"):
        if snap is None:
            st.info("Per-layer statistics appear here once training runs (they are taken on every training step).")
        else:
            st.caption(f"Step {snap.step + 1}: per-filter mean |activation| and gradient norm of each layer.")
            st.plotly_chart(layer_bars_figure(snap.activation, snap.grad_norm), key="mon-bars", width="stretch")
            steps, names, values = mons.stats.grad_history()
            st.markdown("**Gradient norm per layer and step**")
            st.plotly_chart(grad_heatmap_figure(steps, names, values), key="mon-heat", width="stretch")


def draw_maps() -> None:
    st.markdown("**Activation maps**")
    c1, c2, c3 = st.columns([1, 1, 1])
    layer = c1.selectbox("Layer", LAYERS, key="mon-maps-layer")
    if len(sample_ids) == 0:
        st.info("The dataset has no pool examples to show activation maps for.")
        return
    i = int(c2.number_input("Example (pool sample)", 0, len(sample_ids) - 1, 0, key="mon-maps-i"))
    n_maps = int(c3.number_input("Filters shown", 4, 128, 16, step=4, key="mon-maps-n"))
    job, _ = current_monitors(wb)
    maps = activation_maps(live_model(job), layer, sample_x[i])
    order = np.argsort(-maps.reshape(len(maps), -1).mean(1))[:n_maps]
    cols = st.columns([1, 5])
    cols[0].image(to_pil(sample_x[i], 112), caption=f"{classes[int(sample_y[i])]} (id {int(sample_ids[i])})")
    with cols[1], st.container(key="mon-maps"):
        lo, hi = float(maps.min()), float(maps.max())
        per_row = 8
        for start in range(0, len(order), per_row):
            row = st.columns(per_row)
            for col, f in zip(row, order[start:start + per_row]):
                m = (maps[f] - lo) / (hi - lo + 1e-12)
                col.image(to_pil(torch.as_tensor(m)[None].float(), 72), caption=f"filter {int(f)}")
        st.caption("Filters sorted by mean activation; one colour scale for the layer (white = strongest).")


# ---------------------------------------------------------------- embedding view
def embedding_controls() -> dict:
    c1, c2, c3 = st.columns(3)
    what = c1.radio("Embed", ["activations", "filters"], horizontal=True, key="mon-emb-what",
                    help="activations: one point per pool image (its layer output); filters: one point per filter "
                         "(its weights).")
    default_layer = wb.model.feature_layer if wb.model.feature_layer in LAYERS else LAYERS[-1]
    layer = c2.selectbox("Layer", LAYERS, index=LAYERS.index(default_layer), key="mon-emb-layer")
    method = c3.radio("Layout", ["t-SNE", "PCA"], horizontal=True, key="mon-emb-method")
    c4, c5, c6 = st.columns(3)
    perplexity = c4.slider("Perplexity", 5, 50, 30, key="mon-emb-perp", disabled=method != "t-SNE")
    n = c5.number_input("Points", min(20, len(sample_ids)), len(sample_ids), min(300, len(sample_ids)), step=20, key="mon-emb-n",
                        disabled=what == "filters")
    interval = c6.number_input("Update every (s)", 1.0, 60.0, 3.0, step=1.0, key="mon-emb-every")
    return {"what": what, "layer": layer, "method": method, "perplexity": float(perplexity), "n": int(n),
            "interval": float(interval)}


def embedding_input(job: Job | None, mons, opts: dict,
                    wait: EmbeddingWait | None = None) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(tag of the data's state, rows to embed, predictions or None) for the chosen view;
    ``wait`` shows the reading of the layer when it has to be computed."""
    n, layer = opts["n"], opts["layer"]
    if opts["what"] == "filters":
        model = live_model(job)
        tag = f"step {ss['mon-live-model'][0][1]}" if model is not wb.model else f"v{wb.current_version}"
        return tag, filter_vectors(model, layer), None
    if job is not None and job.running and mons.probe is not None:
        if mons.probe.layer != layer:
            mons.probe.set_layer(layer)
        if mons.probe.interval_s != opts["interval"]:  # probe on the page's time basis
            mons.probe.set_interval_s(opts["interval"])
        if mons.probe.count != n:  # only the points shown: cheaper probes, more often within the budget
            mons.probe.set_count(n)
        snap = mons.probe.latest()
        if snap is not None and snap.layer == layer:
            return f"step {snap.step}", snap.activations[:n], snap.preds[:n]
    key = ("mon-acts", wb.current_version, layer, n)
    if ss.get("mon-acts-key") != key:
        report = wait.activations(f"{layer} activations of {n} pool images…") if wait is not None else None
        acts = layer_activations(wb.model, layer, sample_x[:n])
        if report is not None:
            report(0.5, f"Predictions for {n} pool images…")
        preds = predict(wb.model, sample_x[:n])[0].argmax(1).numpy()
        if report is not None:
            report(1.0, f"{layer} activations and predictions of {n} pool images")
        ss["mon-acts-key"], ss["mon-acts"] = key, (acts, preds)
    acts, preds = ss["mon-acts"]
    return f"v{wb.current_version}", acts, preds


def draw_embedding(job: Job | None, mons, opts: dict) -> None:
    stream_key = (opts["what"], opts["layer"], opts["method"], opts["perplexity"], opts["n"])
    if ss.get("mon-stream-key") != stream_key:
        ss["mon-stream-key"] = stream_key
        ss["mon-stream"] = EmbeddingStream("tsne" if opts["method"] == "t-SNE" else "pca", perplexity=opts["perplexity"])
        ss["mon-stream-tag"], ss["mon-stream-time"] = None, 0.0
    stream: EmbeddingStream = ss["mon-stream"]
    wait = EmbeddingWait(f"Drawing the {opts['method']} embedding of {opts['layer']} {opts['what']}") \
        if stream.layout is None else None  # a cold layout takes seconds: show it
    tag, x, preds = embedding_input(job, mons, opts, wait)
    due = time.time() - ss["mon-stream-time"] >= opts["interval"]
    if stream.layout is None or (tag != ss["mon-stream-tag"] and due):
        try:
            stream.update(x, np.arange(len(x)), progress=wait.layout() if wait is not None else None)
        except ValueError as exc:
            if wait is not None:
                wait.finish()
            st.warning(f"Cannot embed this layer: {exc}")
            return
        ss["mon-stream-tag"], ss["mon-stream-time"] = tag, time.time()
    if wait is not None:
        wait.finish()
    coords, trails = stream.layout, stream.trails()
    activations = opts["what"] == "activations"
    ids = sample_ids[: len(coords)].numpy() if activations else np.arange(len(coords))
    labels = sample_y[: len(coords)].numpy() if activations else None
    title = (f"{opts['method']} of {opts['layer']} {'activations' if activations else 'filters'} ({ss['mon-stream-tag']}, "
             f"update {stream.updates})")
    fig = embedding_figure(coords, trails, labels, preds if activations else None, classes if activations else None, ids,
                           title=title, dragmode="lasso" if ss.get("mon-emb-tool", "lasso") == "lasso" else "select")
    shift = stream.last_displacement
    with st.container(key="mon-embedding"):
        event = st.plotly_chart(fig, key="mon-emb-chart", width="stretch", on_select="rerun" if activations else "ignore",
                                selection_mode=("box", "lasso"))
        st.caption("Grey lines: each point's last 5 positions. x = misclassified. "
                   + (f"Mean move at the last update: {shift:.3f} of the layout radius." if shift is not None else ""))
    if activations:
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        picked = sorted({int(p["customdata"]) for p in points if "customdata" in p})
        if picked and picked != ss.get("mon-selected"):
            ss["mon-selected"] = picked
            wb.replace_annotations(SELECTION, [(i, {"label": int(data.labels[i])}) for i in picked])
        selection_panel(wb, job, preds, ids)
    else:
        st.caption("Filters that settle stop moving; their trails shrink. The Layer freezing page uses this cue.")


def update_note(job: Job | None, mons, opts: dict) -> str:
    """When the embedding will change next, in words (what "Update every (s)" does now)."""
    running = job is not None and job.running
    if not running:
        return (f"Not training: the embedding shows the current version and changes when its settings change or "
                f"training runs (then about every {opts['interval']:g} s at most).")
    if opts["what"] == "filters":
        return (f"The filter embedding updates about every {opts['interval']:g} s, as set (with the weights the "
                "training thread last published), or as fast as the layout is computed if that is slower.")
    return probe_caption(mons.probe) or "The first snapshot of the model in training comes at its next step."


# ---------------------------------------------------------------- the live part
opts = embedding_controls() if view_name == "Embedding" else None
if view_name == "Embedding":
    st.radio("Selection tool", ["lasso", "box"], horizontal=True, key="mon-emb-tool")


def draw(job: Job | None, view: dict | None) -> None:
    _, mons = current_monitors(wb)
    if view_name == "Curves":
        with st.container(key="mon-curves"):
            if view is not None and view["steps"]:
                st.plotly_chart(live_figure(view), key="mon-chart", width="stretch")
            else:
                st.caption("Loss, accuracy, time per epoch and learning rate appear here as the model trains.")
    elif view_name == "Network":
        draw_network(job, mons)
    else:
        draw_embedding(job, mons, opts)
        with st.container(key="mon-emb-pace"):
            st.caption(update_note(job, mons, opts))
        retrain_report_panel(wb, job)


live_job(wb, "mon", draw, pausable=True)
if view_name == "Network":
    draw_maps()
