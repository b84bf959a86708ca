"""The Attention page's panels apart from the annotated image (:mod:`app.attention_annotate`): the
parameters, START / STOP / FINE-TUNE, the candidate grid, test mode and the annotations' timing
and downloads, with the Grad-CAMs, superpixels and bias reports they cache. Session-state keys
start with ``att-`` (the page clears them when another workbench opens)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import streamlit as st
import torch

from app.attention_annotate import cached_picture
from app.attention_widgets import render, thumbnail
from app.mark_uses import MarkUses, mark_uses_panel
from app.shortcut_widgets import shortcut_compare
from app.widgets import metric_delta
from core.engine import predict
from core.explain import gradcam
from core.explain.superpixels import SuperpixelCache
from core.feedback.attention.workflow import (
    SETTINGS_KEY,
    PageSettings,
    Round,
    annotation_rows,
    annotations_of,
    bias_report,
    save_round,
    start_round,
)
from core.models import for_inference, model_from_checkpoint
from core.select import SAMPLERS
from core.session.workbench import Workbench

SAMPLER_LABELS = {"random": "random", "entropy": "entropy", "margin": "margin", "kcenter": "k-center greedy",
                  "gmm": "GMM over attention (paper)"}


MARK_USES = MarkUses(
    "att", "What the fine-tune uses", "guidance", "Attention loss",
    "w_g x the click loss (the paper's): the Grad-CAM's barycentre toward your positive clicks, and less attention "
    "in what you marked to ignore.",
    "Counterexamples from the 'ignore' marks",
    "For each annotated image, copies whose right-clicked regions (or everything outside the polygon) come from other "
    "training images, with the label kept: a background colour or texture that a region penalty cannot fence off "
    "stops naming the class (Teso & Kersting 2019).",
    "k: copies made of each annotated image that has marks, each with another donor image.",
    "Neither is on: FINE-TUNE trains with cross-entropy on the annotated images only.")


def sampler_label(name: str) -> str:
    """A sampler's name as the page shows it."""
    return SAMPLER_LABELS.get(name, name)


@st.cache_resource(show_spinner=False, max_entries=4)
def superpixel_cache(source: str) -> SuperpixelCache:
    """Superpixels of a dataset's images, computed once per image and shared by every tab."""
    return SuperpixelCache()


def segments_of(wb: Workbench, example_id: int) -> np.ndarray:
    """The superpixels of image ``example_id`` of the workbench's data."""
    return superpixel_cache(wb.data_source).get(int(example_id), wb.data.images[int(example_id)])


def cams_for(wb: Workbench, settings: PageSettings, ids: list[int], model=None,
             version: int | None = None) -> dict[int, np.ndarray]:
    """Grad-CAMs (the settings' target class) of ``ids`` under a model, cached per version."""
    model = model or wb.model
    version = wb.current_version if version is None else version
    cache = st.session_state.setdefault("att-cams", {})
    missing = [i for i in ids if (version, settings.target, i) not in cache]
    if missing:
        idx = torch.as_tensor(missing, dtype=torch.long)
        targets = wb.data.labels[idx] if settings.target == "true" else None
        # eval mode without switching the shared model (issue 29)
        maps = gradcam(for_inference(model), wb.data.images[idx], targets).cams.numpy()
        for i, m in zip(missing, maps):
            cache[(version, settings.target, i)] = m
    return {i: cache[(version, settings.target, i)] for i in ids}


def parameter_panel(wb: Workbench, settings: PageSettings) -> None:
    """Sampler, round size, loss weights, learning rate, epochs, rehearsal, CAM target, opacity, mode; each
    saved with the workbench as it changes."""
    ss = st.session_state

    def save() -> None:  # a parameter changed: save all of them at once
        values = {f: ss[f"att-p-{f}"] for f in asdict(PageSettings()) if f"att-p-{f}" in ss}
        wb.update_settings(**{SETTINGS_KEY: asdict(replace(settings, **values))})

    st.markdown("**Parameters**")
    for f, v in asdict(settings).items():
        ss.setdefault(f"att-p-{f}", v)
    st.selectbox("Sampler", list(SAMPLERS), format_func=sampler_label, key="att-p-sampler",
                 on_change=save, help="How the next round's candidates are chosen from the pool.")
    st.number_input("Candidates per round", 1, 512, step=8, key="att-p-per_round", on_change=save,
                    help="The paper shows batches of 64.")
    st.number_input("Shown at a time", 4, 32, step=4, key="att-p-per_page", on_change=save,
                    help="The paper shows 8-16 at a time.")
    c1, c2 = st.columns(2)
    c1.number_input("w_g", 0.0, 10.0, step=0.05, key="att-p-w_g", on_change=save, help="Weight of the guidance loss.")
    c2.number_input("w_c", 0.0, 10.0, step=0.05, key="att-p-w_c", on_change=save,
                    help="Weight of the classification loss.")
    c1, c2 = st.columns(2)
    c1.number_input("Learning rate", 1e-5, 1.0, step=0.005, format="%.4f", key="att-p-lr", on_change=save)
    c2.number_input("Epochs", 1, 200, step=1, key="att-p-epochs", on_change=save,
                    help="Epochs per fine-tune over the annotated images (and the rehearsal images).")
    st.number_input("Rehearsal images", 0, 4096, step=16, key="att-p-rehearsal", on_change=save,
                    help="Labelled training images, drawn at random, that each fine-tune also trains on beside the "
                         "annotated ones, so that a round of a few images does not undo what the model knows. "
                         "0: the paper's fine-tune, on the annotated images only.")
    st.radio("Attention of the", ["true", "predicted"], format_func=lambda t: f"{t} class", key="att-p-target",
             on_change=save, horizontal=True, help="Whose Grad-CAM is shown and guided.")
    st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="att-p-opacity", on_change=save)
    st.radio("Annotate by", ["click", "polygon"], key="att-p-mode", on_change=save, horizontal=True,
             help="click: left-click where to look, right-click what to ignore. polygon: draw around the object "
                  "(the paper's user-study baseline; pixel-level supervision).")
    mark_uses_panel(MARK_USES, save)


# ---------------------------------------------------------------- test mode
@st.cache_resource(show_spinner=False, max_entries=8)
def version_model(wb_id: str, number: int, checkpoint: str):
    """A version's model, loaded once per server (read-only: only evaluated)."""
    return model_from_checkpoint(checkpoint).eval()


def _model_of(wb: Workbench, number: int):
    return wb.model if number == wb.current_version else version_model(wb.id, number, wb.version(number).checkpoint)


def report_of(wb: Workbench, number: int) -> dict:
    """The library's bias report of a version (cached per workbench and version)."""
    cache = st.session_state.setdefault("att-reports", {})
    if number not in cache:
        cache[number] = bias_report(_model_of(wb, number), wb.data)
    return cache[number]


def test_mode(wb: Workbench, settings: PageSettings) -> None:
    """The current version against the base model: accuracies, attention on the object, and the
    test images this version fixed or broke with both Grad-CAMs."""
    base_v, cur_v, data = 0, wb.current_version, wb.data
    with st.spinner("Measuring both versions on the test split(s)…"):
        before, after = report_of(wb, base_v), report_of(wb, cur_v)
    biased = "test_aligned" in data.splits
    with st.container(key="att-test"):
        same = cur_v == base_v
        st.markdown(f"**v{cur_v}** (current) against **v{base_v}** (base model)" if not same else
                    f"The current version is the base model (v{base_v}): fine-tune to compare.")
        if not same:  # how it was made: the annotations, and the counterexamples when there were any
            st.caption(f"v{cur_v}: {wb.version(cur_v).description}")

        def delta(key: str) -> dict:  # no arrow at all when there is nothing to compare
            return metric_delta(None if same else after[key] - before[key])

        c1, c2, c3 = st.columns(3)
        label = "Bias-conflicting test" if biased else "Test accuracy"
        c1.metric(label, f"{after['test_acc']:.1f}%", **delta("test_acc"))
        if after["aligned_acc"] is not None:
            c2.metric("Bias-aligned test", f"{after['aligned_acc']:.1f}%", **delta("aligned_acc"))
        if after["attention_in_mask"] is not None:
            c3.metric("Attention on the object", f"{after['attention_in_mask']:.1f}%", **delta("attention_in_mask"),
                      help="Share of the Grad-CAM's mass inside the object masks of the test images.")
        shortcut_compare(wb, base_v, cur_v, key="att-shortcut")
        if biased:
            st.caption("Bias-conflicting: background colour independent of the class; bias-aligned: the same digits on "
                       "their class's colour.")
    changed_images(wb, settings, base_v)


def changed_images(wb: Workbench, settings: PageSettings, base_v: int) -> None:
    """The test images fixed (or broken) by the current version: each with both Grad-CAMs."""
    data, cur_v, classes = wb.data, wb.current_version, wb.data.classes
    ids = np.asarray(data.ids("test"), dtype=np.int64)
    x = data.images[torch.as_tensor(ids)]
    pb = predict(version_model(wb.id, base_v, wb.version(base_v).checkpoint), x)[0].argmax(1).numpy()
    pa = predict(wb.model, x)[0].argmax(1).numpy()
    y = data.labels[torch.as_tensor(ids)].numpy()
    which = st.radio("Show", ["fixed by this version", "broken by this version", "all"], horizontal=True,
                     key="att-test-filter")
    keep = {"fixed by this version": (pb != y) & (pa == y), "broken by this version": (pb == y) & (pa != y),
            "all": np.ones(len(ids), bool)}[which]
    chosen = ids[keep][:16]
    st.caption(f"{int(((pb != y) & (pa == y)).sum())} test images fixed, {int(((pb == y) & (pa != y)).sum())} broken. "
               "Each pair: Grad-CAM of the base model (left) and of the current version (right).")
    if len(chosen) == 0:
        st.info("No test images in this group.")
        return
    before_maps = cams_for(wb, settings, chosen.tolist(), version_model(wb.id, base_v, wb.version(base_v).checkpoint),
                           base_v)
    after_maps = cams_for(wb, settings, chosen.tolist())
    pred_of = dict(zip(ids.tolist(), zip(pb.tolist(), pa.tolist())))
    with st.container(key="att-gallery"):
        cols = st.columns(4)
        for k, i in enumerate(chosen.tolist()):
            b, a = pred_of[i]
            with cols[k % 4]:
                c1, c2 = st.columns(2)
                c1.image(render(data.images[i], before_maps[i], size=112, opacity=settings.opacity),
                         caption=f"v{base_v}: {classes[b]}")
                c2.image(render(data.images[i], after_maps[i], size=112, opacity=settings.opacity),
                         caption=f"v{cur_v}: {classes[a]}")
                st.caption(f"true {classes[int(data.labels[i])]} · id {i}")


# ---------------------------------------------------------------- rounds
def in_current_version(wb: Workbench) -> set[int]:
    """The images whose annotations the current version was fine-tuned on (none for the base)."""
    record = wb.version(wb.current_version)
    feedback = getattr(record, "feedback", None) or {}
    return {int(i) for i in feedback.get("example_ids", [])} if feedback.get("kind") == "attention" else set()


def _round_caption(wb: Workbench, rnd: Round | None, busy: bool, n_all: int, in_round: int, used: bool) -> str:
    earlier = n_all - in_round
    also = f" (with {earlier} from earlier rounds, {n_all} in all)" if earlier and not used else ""
    if rnd is None:
        return "Press START: the sampler picks the pool images the model should be shown next."
    if not rnd.closed:
        return (f"{in_round} of {len(rnd.ids)} confirmed{also}. FINE-TUNE can start at any time; "
                "STOP ends the round and keeps what is confirmed." if n_all else
                "Confirm an image, and FINE-TUNE can start on it. STOP ends the round.")
    if busy:
        return f"Round {rnd.number} is fine-tuning. Press START for the next round when it is done."
    if used:
        return f"Round {rnd.number} went into v{wb.current_version}. Press START for the next round."
    if in_round:
        return (f"Round {rnd.number} stopped. Its {in_round} confirmed image{'s are' if in_round != 1 else ' is'} "
                f"kept{also}: FINE-TUNE trains on them, or press START for the next round.")
    return (f"Round {rnd.number} stopped with nothing confirmed in it{also}. Press START for the next "
            "round" + (", or FINE-TUNE." if n_all else "."))


def round_controls(wb: Workbench, settings: PageSettings, rnd: Round | None, busy: bool,
                   fine_tune: Callable[[Round | None], None]) -> Round | None:
    """START (or STOP while a round is open), with progress while the pool is scored, and
    FINE-TUNE (``fine_tune``) as soon as one image is confirmed: on every confirmed image so far."""
    anns = annotations_of(wb)
    in_round = sum(1 for a in anns if rnd is not None and a.extra.get("round") == rnd.number)
    used = {a.example_id for a in anns} <= in_current_version(wb)  # the current version has them all already
    open_round = rnd is not None and not rnd.closed
    with st.container(key="att-controls"):
        c1, c2, _ = st.columns([1, 2, 1.5], vertical_alignment="center")
        c3 = st.container()  # below the buttons, full width: the FINE-TUNE label is never cut off
        if not open_round:
            if c1.button("START", type="primary", key="att-start", disabled=busy, width="stretch",
                         help="Ask the sampler for a round of candidates."):
                bar = c3.progress(0.0, text="Scoring the pool…")
                try:
                    rnd = start_round(wb, settings, progress=lambda f: bar.progress(
                        f, text=f"Scoring the pool with {sampler_label(settings.sampler)}: {100 * f:.0f}%"))
                except ValueError as exc:
                    st.error(str(exc))
                    return rnd
                st.session_state.pop("att-current", None)
                st.rerun()
        elif c1.button("STOP", key="att-stop", width="stretch",
                       help="End this round. Its confirmed images are kept, and FINE-TUNE trains on them."):
            rnd.closed = True
            save_round(wb, rnd)
            st.rerun()
        if anns and (open_round or not used):
            n = len(anns)
            if c2.button(f"FINE-TUNE on {n} confirmed image{'s' if n != 1 else ''}", type="primary",
                         key="att-finetune", disabled=busy, width="stretch",
                         help="Fine-tune now on every image confirmed in this workbench (clicks not confirmed are "
                              "not used). An open round ends: START then picks candidates for the new version."):
                fine_tune(rnd)
        c3.caption(_round_caption(wb, rnd, busy, len(anns), in_round, used))
    return rnd


def candidate_grid(wb: Workbench, settings: PageSettings, rnd: Round, done: set[int]) -> list[int]:
    """The round's page of candidates (thumbnails with their Grad-CAM, a check mark once
    confirmed) with an 'open' button each; the ids shown."""
    per_page = int(settings.per_page)
    rnd.page = min(rnd.page, rnd.pages(per_page) - 1)
    ids = rnd.page_ids(per_page)
    maps = cams_for(wb, settings, ids)
    with st.container(key="att-grid"):
        st.markdown(f"**Round {rnd.number}** ({sampler_label(rnd.sampler)}): "
                    f"**{len(done & set(rnd.ids))} of {len(rnd.ids)} confirmed** · page {rnd.page + 1} of "
                    f"{rnd.pages(per_page)}")
        cols = st.columns(8)  # the same size for a round of 2 as for 64: the annotated image stays in view
        for k, i in enumerate(ids):
            with cols[k % len(cols)]:
                st.image(cached_picture("att-pictures",
                                        ("thumb", wb.current_version, settings.target, i, settings.opacity, i in done),
                                        lambda i=i: thumbnail(wb.data.images[i], maps[i], size=96,
                                                              opacity=settings.opacity, confirmed=i in done)),
                         width="stretch")
                if st.button("✓ open" if i in done else "open", key=f"att-pick-{i}", width="stretch",
                             type="primary" if i == st.session_state.get("att-current") else "secondary"):
                    st.session_state["att-current"] = i
                    st.rerun()
    return ids


def timing_and_downloads(wb: Workbench) -> None:
    """This session's seconds and clicks per image, and the workbench's annotations as CSV and JSON."""
    anns = annotations_of(wb)
    mine = [a for a in anns if a.example_id in set(st.session_state.get("att-session-ids", []))]
    with st.container(key="att-timing"):
        if mine:
            st.caption(f"This session: {len(mine)} image{'s' if len(mine) != 1 else ''}, "
                       f"{np.mean([a.seconds for a in mine]):.1f} s and {np.mean([a.operations for a in mine]):.1f} "
                       f"clicks per image on average.")
        if anns:
            rows = annotation_rows(anns, wb.data.classes)
            c1, c2, c3 = st.columns([2, 1, 1])
            c1.caption(f"{len(anns)} annotations in this workbench.")
            flat = pd.DataFrame([{**r, "positives": json.dumps(r["positives"]), "polygon": json.dumps(r["polygon"])}
                                 for r in rows])
            c2.download_button("Annotations (CSV)", flat.to_csv(index=False), file_name=f"attention-{wb.id}.csv",
                               mime="text/csv", key="att-dl-csv", on_click="ignore", width="stretch")
            c3.download_button("Annotations (JSON)", json.dumps(rows, indent=1), file_name=f"attention-{wb.id}.json",
                               mime="application/json", key="att-dl-json", on_click="ignore", width="stretch")
