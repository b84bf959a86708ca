"""Attention (seed 001, He et al.): candidates chosen by active learning, left-click where the
model should look, right-click what it should ignore, fine-tune, and see the bias go. The panels
are :mod:`app.attention_panels`, the annotated image :mod:`app.attention_annotate`."""
from __future__ import annotations

import streamlit as st

from app.attention_annotate import AnnotationView, annotate, draft_summary, new_draft
from app.attention_panels import (
    candidate_grid,
    cams_for,
    parameter_panel,
    round_controls,
    segments_of,
    test_mode,
    timing_and_downloads,
)
from app.state import current_workbench
from app.widgets import live_job, offer_biased_digits, start_job
from core.feedback.attention.loss import AttentionAnnotation
from core.feedback.attention.workflow import (
    SETTINGS_KEY,
    PageSettings,
    Round,
    annotations_of,
    confirm,
    load_round,
    save_round,
    start_fine_tune,
)

wb = current_workbench()
ss = st.session_state
data = wb.data
settings = PageSettings.from_dict(wb.settings.get(SETTINGS_KEY))
job = wb.jobs.current
busy = job is not None and job.running

if ss.get("att-wb") != wb.id:  # first visit, or another workbench: drafts and view state start clean
    for k in [k for k in ss if str(k).startswith("att-")]:
        del ss[k]
    ss["att-wb"] = wb.id
    ss["att-session-ids"] = []


def confirmed_ids(rnd: Round) -> set[int]:
    """The images confirmed in round ``rnd``."""
    return {a.example_id for a in annotations_of(wb) if a.extra.get("round") == rnd.number}


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


def saved_message(saved: AttentionAnnotation) -> str:
    """What the page says under the buttons once an annotation is on disk."""
    p, ops = len(saved.positives), saved.operations
    return (f"Saved image {saved.example_id}: {p} point{'s' if p != 1 else ''}, "
            f"{int(saved.negative_mask().sum())} pixels to ignore, {ops} click{'s' if ops != 1 else ''}, "
            f"{saved.seconds:.1f} s.")


def annotation_view(current: int) -> AnnotationView:
    """Image ``current`` as the annotation component draws it on this page."""
    return AnnotationView(
        prefix="att", item_prefix="att", example_id=current, image=data.images[current],
        cam=cams_for(wb, settings, [current])[current], segments=segments_of(wb, current),
        label=int(data.labels[current]), mode=settings.mode, opacity=settings.opacity,
        draft=lambda: ss.setdefault("att-drafts", {}).setdefault(current, new_draft()),
        picture_key=(wb.current_version, settings.target, current, settings.opacity), mode_switch=True,
        polygon_hint="Click around the object to draw a polygon; click its first point again to close it.",
        caption=lambda d: (f"**{draft_summary(d)}** (not saved until CONFIRM). Green dots: where the model should "
                           "look. Red hatching: superpixels it should ignore. Heat map and outlines: where it looks now."),
        buttons=("undo", "redo", "clear", "confirm", ""), confirm_label="CONFIRM")


def annotation_panel(rnd: Round, current: int, done: set[int], page_ids: list[int]) -> None:
    """The open image: annotate, CONFIRM (saved before the page says so, then the next image),
    NEXT page of candidates."""
    if rnd.mark_shown(current):
        save_round(wb, rnd)  # the clock for this image's timing starts now, and survives a refresh
    with st.container(key="att-annotate"):
        st.markdown(f"**Image {current}** · true class **{data.classes[int(data.labels[current])]}**"
                    + (" · ✓ confirmed (confirming again replaces it)" if current in done else ""))
        done_now = annotate(annotation_view(current))
        if done_now.annotation is not None:
            saved = confirm(wb, rnd, done_now.annotation)  # on disk before the check mark is drawn
            ss["att-session-ids"].append(current)
            left = [i for i in page_ids if i not in done and i != current]
            ss["att-current"] = left[0] if left else current
            # said below the buttons, not in a notice above the page: a notice goes away on the next
            # rerun (the first click on the next image) and moved the picture under the pointer
            ss["att-saved-msg"] = saved_message(saved)
            st.rerun()
        pages = rnd.pages(int(settings.per_page))
        if pages > 1 and done_now.spare[0].button("NEXT", key="att-next", width="stretch",
                                                  help="The next page of candidates."):
            rnd.page = (rnd.page + 1) % pages
            save_round(wb, rnd)
            ss.pop("att-current", None)
            st.rerun()
        if ss.get("att-saved-msg"):
            with st.container(key="att-saved"):
                st.caption(f":material/check_circle: {ss['att-saved-msg']}")


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
    parameter_panel(wb, settings)

with main:
    testing = st.toggle("Test mode", key="att-test-mode", help="Compare the current version with the base model on "
                        "the test split(s): accuracy, attention on the object, and which images changed.")
    live_job(wb, "att")
    if testing:
        test_mode(wb, settings)
    else:
        rnd = round_controls(wb, settings, load_round(wb), busy, start_attention_fine_tune)
        if rnd is not None and not rnd.closed:
            done = confirmed_ids(rnd)
            page_ids = candidate_grid(wb, settings, rnd, done)
            current = ss.get("att-current")
            if current not in rnd.ids:
                current = next((i for i in page_ids if i not in done), page_ids[0] if page_ids else None)
                ss["att-current"] = current
            if current is not None:
                annotation_panel(rnd, int(current), done, page_ids)
        timing_and_downloads(wb)
