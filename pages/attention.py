"""Attention (seed 001, He et al.): candidates chosen by active learning, left-click where the
model should look, right-click what it should ignore, fine-tune, and see the bias go."""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import streamlit as st
import torch
from streamlit_drawable_canvas import st_canvas

from app.attention_widgets import polygon_from_canvas, render, scale_for, thumbnail
from app.click_image import click_image, events_after
from app.shortcut_widgets import shortcut_compare
from app.state import current_workbench
from app.widgets import live_job, metric_delta, offer_biased_digits, start_job
from core.feedback.attention.workflow import (
    SETTINGS_KEY,
    PageSettings,
    Round,
    annotation_rows,
    annotations_of,
    bias_report,
    confirm,
    load_round,
    save_round,
    start_fine_tune,
    start_round,
)
from core.engine import predict
from core.explain import gradcam
from core.explain.superpixels import SuperpixelCache
from core.feedback.attention.loss import AttentionAnnotation
from core.models import model_from_checkpoint
from core.select import SAMPLERS

wb = current_workbench()
ss = st.session_state
data = wb.data
classes = data.classes
settings = PageSettings.from_dict(wb.settings.get(SETTINGS_KEY))
job = wb.jobs.current
busy = job is not None and job.running
WORKSPACE_PX = 384
SAMPLER_LABELS = {"random": "random", "entropy": "entropy", "margin": "margin", "kcenter": "k-center greedy",
                  "gmm": "GMM over attention (paper)"}

if ss.get("att-wb") != wb.id:  # first visit, or another workbench: drafts and view state start clean
    for k in [k for k in ss if str(k).startswith("att-")]:
        del ss[k]
    ss["att-wb"] = wb.id
    ss["att-session-ids"] = []


@st.cache_resource(show_spinner=False, max_entries=4)
def superpixel_cache(source: str) -> SuperpixelCache:
    """Superpixels of a dataset's images, computed once per image and shared by every tab."""
    return SuperpixelCache()


def segments_of(example_id: int) -> np.ndarray:
    return superpixel_cache(wb.data_source).get(int(example_id), data.images[int(example_id)])


def cams_for(ids: list[int], model=None, version: int | None = None) -> dict[int, np.ndarray]:
    """Grad-CAMs (the settings' target class) of ``ids`` under a model, cached per version."""
    model = model or wb.model
    version = wb.current_version if version is None else version
    cache = ss.setdefault("att-cams", {})
    missing = [i for i in ids if (version, settings.target, i) not in cache]
    if missing:
        idx = torch.as_tensor(missing, dtype=torch.long)
        targets = data.labels[idx] if settings.target == "true" else None
        from core.models import for_inference  # eval mode without switching the shared model (issue 29)

        maps = gradcam(for_inference(model), data.images[idx], targets).cams.numpy()
        for i, m in zip(missing, maps):
            cache[(version, settings.target, i)] = m
    return {i: cache[(version, settings.target, i)] for i in ids}


def cached_picture(key: tuple, draw):
    """A rendered picture kept per state (version, image, marks, opacity...): idle reruns
    reuse it instead of drawing and encoding it again. Bounded to the last 64."""
    cache = ss.setdefault("att-pictures", {})
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = draw()
    return cache[key]


def save_settings() -> None:
    """A parameter changed: save all of them with the workbench at once."""
    values = {f: ss[f"att-p-{f}"] for f in asdict(PageSettings()) if f"att-p-{f}" in ss}
    wb.update_settings(**{SETTINGS_KEY: asdict(replace(settings, **values))})


def parameter_panel() -> None:
    """Sampler, round size, loss weights, learning rate, epochs, CAM target, opacity, mode."""
    st.markdown("**Parameters**")
    for f, v in asdict(settings).items():
        ss.setdefault(f"att-p-{f}", v)
    st.selectbox("Sampler", list(SAMPLERS), format_func=lambda s: SAMPLER_LABELS.get(s, s), key="att-p-sampler",
                 on_change=save_settings, help="How the next round's candidates are chosen from the pool.")
    st.number_input("Candidates per round", 1, 512, step=8, key="att-p-per_round", on_change=save_settings,
                    help="The paper shows batches of 64.")
    st.number_input("Shown at a time", 4, 32, step=4, key="att-p-per_page", on_change=save_settings,
                    help="The paper shows 8-16 at a time.")
    c1, c2 = st.columns(2)
    c1.number_input("w_g", 0.0, 10.0, step=0.05, key="att-p-w_g", on_change=save_settings, help="Weight of the guidance loss.")
    c2.number_input("w_c", 0.0, 10.0, step=0.05, key="att-p-w_c", on_change=save_settings,
                    help="Weight of the classification loss.")
    c1, c2 = st.columns(2)
    c1.number_input("Learning rate", 1e-5, 1.0, step=0.005, format="%.4f", key="att-p-lr", on_change=save_settings)
    c2.number_input("Epochs", 1, 200, step=1, key="att-p-epochs", on_change=save_settings,
                    help="Epochs per fine-tune over the annotated images.")
    st.radio("Attention of the", ["true", "predicted"], format_func=lambda t: f"{t} class", key="att-p-target",
             on_change=save_settings, horizontal=True, help="Whose Grad-CAM is shown and guided.")
    st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="att-p-opacity", on_change=save_settings)
    st.radio("Annotate by", ["click", "polygon"], key="att-p-mode", on_change=save_settings, horizontal=True,
             help="click: left-click where to look, right-click what to ignore. polygon: draw around the object "
                  "(the paper's user-study baseline; pixel-level supervision).")
    with st.container(key="att-cex-panel"):
        st.markdown("**What the fine-tune uses**")
        st.toggle("Attention loss", key="att-p-guidance", on_change=save_settings,
                  help="w_g x the click loss (the paper's): the Grad-CAM's barycentre toward your positive clicks, "
                       "and less attention in what you marked to ignore.")
        st.toggle("Counterexamples from the 'ignore' marks", key="att-p-counterexamples", on_change=save_settings,
                  help="For each annotated image, copies whose right-clicked regions (or everything outside the "
                       "polygon) come from other training images, with the label kept: a background colour or texture "
                       "that a region penalty cannot fence off stops naming the class (Teso & Kersting 2019).")
        st.number_input("Counterexamples per image", 1, 64, step=1, key="att-p-cex_k", on_change=save_settings,
                        disabled=not ss.get("att-p-counterexamples"),
                        help="k: copies made of each annotated image that has marks, each with another donor image.")
        if not ss.get("att-p-guidance") and not ss.get("att-p-counterexamples"):
            st.caption("Neither is on: FINE-TUNE trains with cross-entropy on the annotated images only.")


# ---------------------------------------------------------------- drafts: one image's clicks before CONFIRM
def draft(example_id: int) -> dict:
    return ss.setdefault("att-drafts", {}).setdefault(int(example_id), {"pos": [], "neg": [], "undo": [], "redo": [],
                                                                         "ops": 0})


def change(d: dict, pos: list, neg: list) -> None:
    d["undo"].append((list(d["pos"]), list(d["neg"])))
    d["redo"].clear()
    d["pos"], d["neg"] = pos, neg
    d["ops"] += 1


def take_click(example_id: int, key: str) -> None:
    """Apply the events the image component sent (clicks and the mode hotkey) that are not
    applied yet, in order, each once (by its ``n``). The component's callback calls this before
    the script body, so a click whose rerun a quicker next click interrupts is applied all the
    same, and every event carries the ones not acknowledged yet (two clicks that reach the
    server together arrive as one trigger); the body calls it again (AppTest runs no
    callbacks), which finds nothing new."""
    applied = ss.setdefault("att-applied", {})
    for ev in events_after(ss.get(key), applied.get(key, 0)):
        applied[key] = max(applied.get(key, 0), int(ev["n"]))
        if ev["kind"] == "toggle":
            negative = not ss.get("att-negative-mode", False)
            ss["att-negative-mode"] = negative
            ss["att-mode-switch"] = "ignore" if negative else "look here"  # the switch shows the hotkey's mode
            continue
        h, w = data.image_shape[1:]
        x, y = min(max(float(ev["x"]), 0.0), w - 1e-3), min(max(float(ev["y"]), 0.0), h - 1e-3)
        d = draft(example_id)
        negative = int(ev.get("button", 0)) == 2 or ss.get("att-negative-mode", False)
        if negative:
            seg = int(segments_of(example_id)[int(y), int(x)])
            neg = [s for s in d["neg"] if s != seg] if seg in d["neg"] else d["neg"] + [seg]
            change(d, list(d["pos"]), neg)
        else:
            change(d, d["pos"] + [(x, y)], list(d["neg"]))


def draft_summary(d: dict) -> str:
    p, n = len(d["pos"]), len(d["neg"])
    return f"{p} point{'s' if p != 1 else ''} to look at, {n} region{'s' if n != 1 else ''} to ignore"


# ---------------------------------------------------------------- the page
st.title("Attention")
st.caption("See where the model looks (Grad-CAM), then left-click where it should look and right-click what it "
           "should ignore; fine-tune and the attention follows (He et al., seed 001). Candidates are chosen by active "
           "learning.")

if data.masks is None:
    offer_biased_digits(wb, "att", f"{data.name} has no object masks: you can annotate it, but test mode cannot "
                        "measure how much of the attention lies on the object.", busy=busy)

left, main = st.columns([1, 3], gap="large")
with left, st.container(key="att-params"):
    parameter_panel()

with main:
    test_mode = st.toggle("Test mode", key="att-test-mode", help="Compare the current version with the base model on "
                          "the test split(s): accuracy, attention on the object, and which images changed.")
    live_job(wb, "att")


# ---------------------------------------------------------------- test mode
@st.cache_resource(show_spinner=False, max_entries=8)
def version_model(wb_id: str, number: int, checkpoint: str):
    """A version's model, loaded once per server (read-only: only evaluated)."""
    return model_from_checkpoint(checkpoint).eval()


def report_of(number: int) -> dict:
    """The library's bias report of a version (cached per workbench and version)."""
    cache = ss.setdefault("att-reports", {})
    if number not in cache:
        model = wb.model if number == wb.current_version else version_model(wb.id, number, wb.version(number).checkpoint)
        cache[number] = bias_report(model, data)
    return cache[number]


def draw_test_mode() -> None:
    base_v, cur_v = 0, wb.current_version
    with st.spinner("Measuring both versions on the test split(s)…"):
        before, after = report_of(base_v), report_of(cur_v)
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
    before_maps = cams_for(chosen.tolist(), version_model(wb.id, base_v, wb.version(base_v).checkpoint), base_v)
    after_maps = cams_for(chosen.tolist())
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


# ---------------------------------------------------------------- annotating
def confirmed_ids(rnd: Round) -> set[int]:
    return {a.example_id for a in annotations_of(wb) if a.extra.get("round") == rnd.number}


def in_current_version() -> set[int]:
    """The images whose annotations the current version was fine-tuned on (none for the base)."""
    record = wb.version(wb.current_version)
    feedback = getattr(record, "feedback", None) or {}
    return {int(i) for i in feedback.get("example_ids", [])} if feedback.get("kind") == "attention" else set()


def start_attention_fine_tune(rnd: Round | None) -> None:
    """FINE-TUNE: every confirmed annotation of the workbench, now; an open round ends (its
    candidates were chosen for the model that is being replaced)."""
    def start():
        job = start_fine_tune(wb, settings)
        if rnd is not None and not rnd.closed:
            rnd.closed = True
            save_round(wb, rnd)
        return job

    start_job(start, key="att")


def round_controls(rnd: Round | None) -> Round | None:
    """START (or STOP while a round is open), with progress while the pool is scored, and
    FINE-TUNE as soon as one image is confirmed: on every confirmed image so far."""
    anns = annotations_of(wb)
    ids = {a.example_id for a in anns}
    in_round = sum(1 for a in anns if rnd is not None and a.extra.get("round") == rnd.number)
    used = ids <= in_current_version()  # the current version was fine-tuned on all of them already
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
                        f, text=f"Scoring the pool with {SAMPLER_LABELS.get(settings.sampler, settings.sampler)}: "
                                f"{100 * f:.0f}%"))
                except ValueError as exc:
                    st.error(str(exc))
                    return rnd
                ss.pop("att-current", None)
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
                start_attention_fine_tune(rnd)
        earlier = len(anns) - in_round
        also = f" (with {earlier} from earlier rounds, {len(anns)} in all)" if earlier and not used else ""
        if rnd is None:
            c3.caption("Press START: the sampler picks the pool images the model should be shown next.")
        elif open_round:
            c3.caption(f"{in_round} of {len(rnd.ids)} confirmed{also}. FINE-TUNE can start at any time; "
                       "STOP ends the round and keeps what is confirmed." if anns else
                       "Confirm an image, and FINE-TUNE can start on it. STOP ends the round.")
        elif busy:
            c3.caption(f"Round {rnd.number} is fine-tuning. Press START for the next round when it is done.")
        elif used:
            c3.caption(f"Round {rnd.number} went into v{wb.current_version}. Press START for the next round.")
        elif in_round:
            c3.caption(f"Round {rnd.number} stopped. Its {in_round} confirmed image{'s are' if in_round != 1 else ' is'} "
                       f"kept{also}: FINE-TUNE trains on them, or press START for the next round.")
        else:
            c3.caption(f"Round {rnd.number} stopped with nothing confirmed in it{also}. Press START for the next "
                       "round" + (", or FINE-TUNE." if anns else "."))
    return rnd


def candidate_grid(rnd: Round, done: set[int]) -> list[int]:
    per_page = int(settings.per_page)
    rnd.page = min(rnd.page, rnd.pages(per_page) - 1)
    ids = rnd.page_ids(per_page)
    maps = cams_for(ids)
    with st.container(key="att-grid"):
        st.markdown(f"**Round {rnd.number}** ({SAMPLER_LABELS.get(rnd.sampler, rnd.sampler)}): "
                    f"**{len(done & set(rnd.ids))} of {len(rnd.ids)} confirmed** · page {rnd.page + 1} of "
                    f"{rnd.pages(per_page)}")
        cols = st.columns(8)  # the same size for a round of 2 as for 64: the workspace stays in view
        for k, i in enumerate(ids):
            with cols[k % len(cols)]:
                st.image(cached_picture(("thumb", wb.current_version, settings.target, i, settings.opacity, i in done),
                                        lambda i=i: thumbnail(data.images[i], maps[i], size=96, opacity=settings.opacity,
                                                              confirmed=i in done)), width="stretch")
                if st.button("✓ open" if i in done else "open", key=f"att-pick-{i}", width="stretch",
                             type="primary" if i == ss.get("att-current") else "secondary"):
                    ss["att-current"] = i
                    st.rerun()
    return ids


def polygon_points(example_id: int, k: int) -> list[tuple[float, float]]:
    """The closed polygon drawn on the canvas, in image pixels."""
    return polygon_from_canvas(ss.get(f"att-poly-{example_id}"), k)


def workspace(rnd: Round, current: int, done: set[int], page_ids: list[int]) -> None:
    h, w = data.image_shape[1:]
    k = scale_for((h, w), WORKSPACE_PX)
    if rnd.mark_shown(current):
        save_round(wb, rnd)  # the clock for this image's timing starts now, and survives a refresh
    cam = cams_for([current])[current]
    segments = segments_of(current)
    polygon_mode = settings.mode == "polygon"
    img_key = f"att-img-{current}"
    if not polygon_mode:
        take_click(current, img_key)
    d = draft(current)
    negative = np.isin(segments, d["neg"]) if d["neg"] else None
    with st.container(key="att-workspace"):
        st.markdown(f"**Image {current}** · true class **{classes[int(data.labels[current])]}**"
                    + (" · ✓ confirmed (confirming again replaces it)" if current in done else ""))
        if polygon_mode:
            st.caption("Click around the object to draw a polygon; click its first point again to close it.")
            bg = render(data.images[current], cam, size=WORKSPACE_PX, opacity=settings.opacity, segments=segments)
            st_canvas(background_image=bg, drawing_mode="polygon", width=bg.width, height=bg.height,
                      stroke_width=2, stroke_color="#2563eb", fill_color="rgba(37, 99, 235, 0.15)",
                      key=f"att-poly-{current}", update_streamlit=True)
        else:
            ss.setdefault("att-mode-switch", "ignore" if ss.get("att-negative-mode") else "look here")
            mode = st.segmented_control(
                "Left click marks", ["look here", "ignore"], key="att-mode-switch",
                help="Right click always marks 'ignore'. On a touch screen or keyboard use this switch; with the "
                     "pointer over the image, the x key toggles it.")
            ss["att-negative-mode"] = mode == "ignore"
            picture = cached_picture(
                ("work", wb.current_version, settings.target, current, settings.opacity, tuple(d["pos"]), tuple(d["neg"])),
                lambda: render(data.images[current], cam, size=WORKSPACE_PX, opacity=settings.opacity, segments=segments,
                               positives=d["pos"], negative=negative))
            click_image(picture, key=img_key, width=picture.width, source_size=(w, h),
                        on_click=lambda: take_click(current, img_key), queued=True,
                        ack=ss.get("att-applied", {}).get(img_key, 0))
            with st.container(key="att-draft"):
                st.caption(f"**{draft_summary(d)}** (not saved until CONFIRM). Green dots: where the model should "
                           "look. Red hatching: superpixels it should ignore. Heat map and outlines: where it looks now.")
        b1, b2, b3, b4, b5 = st.columns(5)
        if b1.button("Undo", key="att-undo", disabled=not d["undo"], width="stretch"):
            d["redo"].append((list(d["pos"]), list(d["neg"])))
            d["pos"], d["neg"] = d["undo"].pop()
            st.rerun()
        if b2.button("Redo", key="att-redo", disabled=not d["redo"], width="stretch"):
            d["undo"].append((list(d["pos"]), list(d["neg"])))
            d["pos"], d["neg"] = d["redo"].pop()
            st.rerun()
        if b3.button("Clear", key="att-clear", disabled=not (d["pos"] or d["neg"]), width="stretch"):
            change(d, [], [])
            st.rerun()
        poly = polygon_points(current, k) if polygon_mode else []
        can_confirm = (len(poly) >= 3) if polygon_mode else bool(d["pos"] or d["neg"])
        if b4.button("CONFIRM", type="primary", key="att-confirm", disabled=not can_confirm, width="stretch"):
            label = int(data.labels[current])
            if polygon_mode:
                ann = AttentionAnnotation(current, label, (h, w), polygon=tuple(poly), mode="polygon",
                                          operations=len(poly))
            else:
                ann = AttentionAnnotation.from_masks(current, label, positives=d["pos"], negative=np.isin(segments, d["neg"]),
                                                     operations=d["ops"])
            saved = confirm(wb, rnd, ann)  # on disk before the check mark is drawn
            ss["att-session-ids"].append(current)
            left = [i for i in page_ids if i not in done and i != current]
            ss["att-current"] = left[0] if left else current
            # said below the buttons, not in a notice above the page: a notice goes away on the next
            # rerun (the first click on the next image) and moved the picture under the pointer
            ss["att-saved-msg"] = (f"Saved image {current}: {len(saved.positives)} point"
                                   f"{'s' if len(saved.positives) != 1 else ''}, "
                                   f"{int(saved.negative_mask().sum())} pixels to ignore, {saved.operations} "
                                   f"click{'s' if saved.operations != 1 else ''}, {saved.seconds:.1f} s.")
            st.rerun()
        if rnd.pages(int(settings.per_page)) > 1 and b5.button("NEXT", key="att-next", width="stretch",
                                                                 help="The next page of candidates."):
            rnd.page = (rnd.page + 1) % rnd.pages(int(settings.per_page))
            save_round(wb, rnd)
            ss.pop("att-current", None)
            st.rerun()
        if ss.get("att-saved-msg"):
            with st.container(key="att-saved"):
                st.caption(f":material/check_circle: {ss['att-saved-msg']}")


def timing_and_downloads() -> None:
    anns = annotations_of(wb)
    mine = [a for a in anns if a.example_id in set(ss.get("att-session-ids", []))]
    with st.container(key="att-timing"):
        if mine:
            st.caption(f"This session: {len(mine)} image{'s' if len(mine) != 1 else ''}, "
                       f"{np.mean([a.seconds for a in mine]):.1f} s and {np.mean([a.operations for a in mine]):.1f} "
                       f"clicks per image on average.")
        if anns:
            rows = annotation_rows(anns, classes)
            c1, c2, c3 = st.columns([2, 1, 1])
            c1.caption(f"{len(anns)} annotations in this workbench.")
            flat = pd.DataFrame([{**r, "positives": json.dumps(r["positives"]), "polygon": json.dumps(r["polygon"])}
                                 for r in rows])
            c2.download_button("Annotations (CSV)", flat.to_csv(index=False), file_name=f"attention-{wb.id}.csv",
                               mime="text/csv", key="att-dl-csv", on_click="ignore", width="stretch")
            c3.download_button("Annotations (JSON)", json.dumps(rows, indent=1), file_name=f"attention-{wb.id}.json",
                               mime="application/json", key="att-dl-json", on_click="ignore", width="stretch")


with main:
    if test_mode:
        draw_test_mode()
    else:
        rnd = round_controls(load_round(wb))
        if rnd is not None and not rnd.closed:
            done = confirmed_ids(rnd)
            page_ids = candidate_grid(rnd, done)
            current = ss.get("att-current")
            if current not in rnd.ids:
                current = next((i for i in page_ids if i not in done), page_ids[0] if page_ids else None)
                ss["att-current"] = current
            if current is not None:
                workspace(rnd, int(current), done, page_ids)
        timing_and_downloads()
