"""Participant mode (``?study=<token>``): the one page a study participant sees. It draws the
participant's current step (instructions, a condition of attention clicking, latent editing or
grid feedback, a questionnaire, the end) and turns gestures into calls on
:mod:`core.study.attention` (latent and grid: :mod:`app.study_tasks` on :mod:`core.study.latent`
and :mod:`core.study.grid`), which log each one before the page reacts. Progress is in the store, so a refresh or a server restart resumes it.
"""
from __future__ import annotations

import numpy as np
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from app.attention_widgets import polygon_from_canvas, render, scale_for
from app.click_image import click_image, events_after
from app.state import get_base_models, get_budget, get_dataset, get_registry, get_store
from core.explain.gradcam import gradcam
from core.explain.superpixels import superpixels
from core.feedback.attention.loss import AttentionAnnotation
from core.models import for_inference
from core.study.design import SUS_ITEMS, TLX_DIMENSIONS, raw_tlx, sus_score
from core.study.attention import AttentionCondition
from core.study.flow import ParticipantFlow
from core.study.grid import GridCondition
from core.study.latent import LatentCondition
from core.study.store import StudyError, StudyStore
from core.session.workbench import Workbench

QUERY_KEY = "study"
WORKSPACE_PX = 384


class NotReady(Exception):
    """The study's base model is still training (the first participant on a fresh server)."""

    def __init__(self, job) -> None:
        super().__init__("the study's model is being prepared")
        self.job = job


def _fresh_workbench(design: dict, token: str) -> str:
    data = get_dataset(design["dataset"])
    status = get_base_models().status(data, design["dataset"], design["arch"], train=True)
    if status.model is None:
        raise NotReady(status.job)
    wb = Workbench.create(get_store(), data, design["dataset"], status.model, base_checkpoint=status.path,
                          settings={"device": "cpu", "study_participant": True}, metrics=status.metrics,
                          description="study base model", budget=get_budget())
    return get_registry().add(wb).id


def _hide_app_chrome() -> None:
    st.html("<style>[data-testid='stSidebar'], [data-testid='stSidebarCollapsedControl'], "
            "[data-testid='stExpandSidebarButton'] { display: none; }</style>")


def page() -> None:
    """The participant's page (registered as the only page in participant mode)."""
    _hide_app_chrome()
    token = st.query_params.get(QUERY_KEY, "")
    studies = StudyStore(get_store())
    try:
        flow = ParticipantFlow(studies, token)
    except StudyError as exc:
        st.error(f"{exc}. Ask the researcher for your link.")
        return
    step = flow.step
    with st.container(key="study-progress"):
        st.caption(f"Study · participant {flow.participant.number + 1} · **{flow.label()}**")
        st.progress(flow.index / max(1, len(flow.steps) - 1), text=f"Step {flow.index + 1} of {len(flow.steps)}")
    if ss_key(flow, "viewed") not in st.session_state:  # one page view per step and tab
        st.session_state[ss_key(flow, "viewed")] = True
        studies.log(flow.token, step.condition if step.kind == "condition" else "", "page_view", None,
                    {"step": flow.index, "kind": step.kind})
    if step.kind == "intro":
        intro(flow)
    elif step.kind in ("condition", "practice"):
        condition(flow)
    elif step.kind == "questionnaire":
        questionnaire(flow)
    else:
        st.title("Thank you")
        st.success("You have finished the study. You can close this tab.")


def ss_key(flow: ParticipantFlow, name: str, *parts) -> str:
    """A session-state / widget key for this participant's step. The token's "_" become "-": a
    token can hold "__", which a bidirectional component's key must not (Streamlit refuses it)."""
    return "-".join(["study", flow.token[:8].replace("_", "-"), str(flow.index), name, *map(str, parts)])


def intro(flow: ParticipantFlow) -> None:
    st.title("Welcome")
    st.markdown(flow.design["intro"] or "In this study you will show an image classifier what it gets wrong, in "
                f"{len(flow.participant.conditions)} parts with a short questionnaire after each. "
                "Each part starts with its instructions.")
    if st.button("Start", type="primary", key="study-start"):
        flow.advance(expected=flow.index)
        st.rerun()


# ----------------------------------------------------------------------------- a condition
def condition(flow: ParticipantFlow) -> None:
    design, step = flow.design, flow.step
    task = flow.task()  # each condition has its own (attention, latent or grid)
    slot = "practice" if step.kind == "practice" else step.condition
    if slot in flow.studies.missing_workbenches(flow.token):  # deleted or lost: never a traceback
        st.error("The model of this part of the study is no longer on the server, so it cannot go on from here. "
                 "Please tell the researcher: they can reset your link in Study admin (or give you a new one). "
                 "Your answers so far are kept until then.")
        return
    try:
        wb_id = flow.start_condition(lambda: _fresh_workbench(design, flow.token))
    except NotReady as exc:
        st.info("Preparing the study's model (once per server). This page continues by itself.")
        wait_for_base(exc.job)
        return
    wb = get_registry().get(wb_id)
    from app import study_tasks  # (imports this module's helpers)

    try:
        cond = {"attention": AttentionCondition, "latent": LatentCondition, "grid": GridCondition}[task](flow, wb)
    except StudyError as exc:  # a design the task cannot run (settings checked by the library)
        st.error(f"This part cannot start: {exc}. Ask the researcher to fix the study's design.")
        return
    info = next(c for c in design["conditions"] if c["name"] == step.condition)
    st.title("Practice round" if cond.practice else f"Part {flow.participant.conditions.index(step.condition) + 1}")
    if info["instructions"]:
        st.markdown(info["instructions"])
    elif task == "attention":
        st.markdown("Left-click where the model **should** look; right-click a region it should **ignore**. "
                    "Then press Confirm." if cond.settings.mode == "click" else
                    "Click around the object to draw a polygon; click its first point again to close it. "
                    "Then press Confirm.")
    else:
        st.markdown(study_tasks.default_instructions(cond))
    if flow.time_left() is not None:
        countdown(flow.token, flow.index)
    job = wb.jobs.current
    if job is not None and job.running:
        fine_tune_progress(flow, cond, job)
        return
    if task != "attention":
        study_tasks.run(flow, cond, job)
        return
    if job is not None and job.status in ("done", "failed", "diverged", "stopped") and cond.round().closed:
        cond.finish(expected=flow.index)
        st.rerun()
    current = cond.current()
    if current is None or flow.condition_finished():
        st.success("This part is done." if current is None else "The time for this part is up.")
        if st.button("Continue", type="primary", key="study-finish"):
            rnd = cond.round()
            if cond.confirmed() and not cond.practice:
                rnd.closed = True
                from core.feedback.attention.workflow import save_round
                save_round(wb, rnd)
                cond.start_fine_tune()
            else:
                cond.finish(expected=flow.index)
            st.rerun()
        return
    annotate(flow, cond, current)


@st.fragment(run_every=1.0)
def countdown(token: str, index: int) -> None:
    """The condition's time left, counting down each second; at 0 the whole page reruns, so it
    says the time is up (the flow is read again: a second tab may have moved on)."""
    flow = ParticipantFlow(StudyStore(get_store()), token)
    left = flow.time_left() if flow.index == index else 0.0
    with st.container(key="study-countdown"):
        if left is None:
            return
        st.caption(f"Time left in this part: **{int(left // 60)}:{int(left % 60):02d}**")
    if left <= 0 and not st.session_state.get(f"study-time-up-{index}"):
        st.session_state[f"study-time-up-{index}"] = True  # once: the page then shows that the time is up
        st.rerun(scope="app")


@st.fragment(run_every=1.0)
def wait_for_base(job) -> None:
    view = job.view() if job is not None else None
    if view is None or view["status"] in ("done", "failed", "stopped", "diverged"):
        st.rerun(scope="app")  # ready (or a new try starts)
    st.progress(view["progress"], text=f"Training the study's model: {view['progress']:.0%}")


@st.fragment(run_every=1.0)
def fine_tune_progress(flow: ParticipantFlow, cond, job) -> None:
    view = job.view()
    with st.container(key="study-fine-tune"):
        where = f" (place {view['queue_position']} in the queue)" if view.get("queue_position") else ""
        what = {"latent": "moves", "grid": "reviews"}.get(flow.task(), "annotations")
        st.progress(view["progress"], text=f"Updating the model with your {what}{where}: {view['progress']:.0%}")
    if not job.running:
        st.rerun(scope="app")


def _draft(flow: ParticipantFlow, item: int) -> dict:
    return st.session_state.setdefault(ss_key(flow, "draft", item), {"pos": [], "neg": [], "undo": [], "redo": []})


def annotate(flow: ParticipantFlow, cond: AttentionCondition, current: int) -> None:
    wb, data = cond.wb, cond.wb.data
    cond.show(current)  # the clock for this image starts at its first showing, and survives a refresh
    image = data.images[current]
    h, w = data.image_shape[1:]
    k = scale_for((h, w), WORKSPACE_PX)
    segments = _segments(wb.data_source, current, image)
    cam = _cam(wb.id, wb.current_version, current, cond.settings.target)
    d = _draft(flow, current)
    polygon = cond.settings.mode == "polygon"
    with st.container(key="study-workspace"):
        st.markdown(f"This image shows **{data.classes[int(data.labels[current])]}**.")
        if polygon:
            st.space("small")  # the canvas's toolbar sits above it and would cover the line above
            bg = render(image, cam, size=WORKSPACE_PX, opacity=cond.settings.opacity, segments=segments)
            canvas_key, points_key = ss_key(flow, "poly", current), ss_key(flow, "poly-points", current)

            def polygon_changed() -> None:  # the canvas sends the polygon once it is closed
                points = polygon_from_canvas(st.session_state.get(canvas_key), k)
                if points and points != st.session_state.get(points_key):
                    # logged before the page reacts: one event per vertex and one for the closing click. The
                    # canvas sends nothing before the polygon closes, so no vertex time is known: each vertex
                    # says it was timed at the close instead of claiming that instant as its own
                    for p in points:
                        cond.gesture("polygon_point", current, {"x": p[0], "y": p[1], "timed_at_close": True})
                    cond.gesture("polygon_close", current, {"vertices": len(points)})
                    st.session_state[points_key] = points

            st_canvas(background_image=bg, drawing_mode="polygon", width=bg.width, height=bg.height, stroke_width=2,
                      stroke_color="#2563eb", fill_color="rgba(37, 99, 235, 0.15)", key=canvas_key,
                      update_streamlit=True, on_change=polygon_changed)
        else:
            img_key = ss_key(flow, "img", current)
            _take_click(flow, cond, current, img_key, segments, d)
            negative = np.isin(segments, d["neg"]) if d["neg"] else None
            picture = render(image, cam, size=WORKSPACE_PX, opacity=cond.settings.opacity, segments=segments,
                             positives=d["pos"], negative=negative)
            click_image(picture, key=img_key, width=picture.width, source_size=(w, h), queued=True,
                        on_click=lambda: _take_click(flow, cond, current, img_key, segments, _draft(flow, current)),
                        ack=st.session_state.get(ss_key(flow, "seen", current)) or 0)
            st.caption("Green dots: where the model should look. Red hatching: what it should ignore. "
                       "Heat map: where it looks now.")
        b1, b2, b3 = st.columns(3)
        if not polygon and b1.button("Undo", key="study-undo", disabled=not d["undo"], width="stretch"):
            cond.gesture("undo", current)
            d["redo"].append((list(d["pos"]), list(d["neg"])))
            d["pos"], d["neg"] = d["undo"].pop()
            st.rerun()
        if not polygon and b2.button("Clear", key="study-clear", disabled=not (d["pos"] or d["neg"]), width="stretch"):
            cond.gesture("clear", current)
            d["undo"].append((list(d["pos"]), list(d["neg"])))
            d["pos"], d["neg"] = [], []
            st.rerun()
        points = st.session_state.get(ss_key(flow, "poly-points", current), []) if polygon else []
        ready = len(points) >= 3 if polygon else bool(d["pos"] or d["neg"])
        if b3.button("Confirm", type="primary", key="study-confirm", disabled=not ready, width="stretch"):
            label = int(data.labels[current])
            if polygon:
                ann = AttentionAnnotation(current, label, (h, w), polygon=tuple(points), mode="polygon",
                                          operations=len(points))
            else:
                ann = AttentionAnnotation.from_masks(current, label, positives=d["pos"],
                                                     negative=np.isin(segments, d["neg"]),
                                                     operations=len(d["pos"]) + len(d["neg"]))
            cond.confirm(ann)  # stored, logged and counted before the next image is drawn
            st.rerun()


def _take_click(flow, cond: AttentionCondition, current: int, key: str, segments: np.ndarray, d: dict) -> None:
    """Log and apply each click the image component sent that is not applied yet (by its
    ``n``, each once, in order). The component's callback calls this before the script body,
    so a click whose rerun a quicker next click interrupts is logged all the same (every event
    carries those not acknowledged yet); the body calls it again and finds nothing new."""
    seen = ss_key(flow, "seen", current)
    for ev in events_after(st.session_state.get(key), st.session_state.get(seen) or 0):
        st.session_state[seen] = max(st.session_state.get(seen) or 0, ev["n"])
        if ev["kind"] != "click":
            continue  # the study page has no mode hotkey: the two mouse buttons say what a click means
        h, w = segments.shape
        x, y = min(max(float(ev["x"]), 0.0), w - 1e-3), min(max(float(ev["y"]), 0.0), h - 1e-3)
        negative = int(ev.get("button", 0)) == 2
        cond.gesture("click", current, {"x": x, "y": y, "button": "right" if negative else "left"})
        d["undo"].append((list(d["pos"]), list(d["neg"])))
        d["redo"].clear()
        if negative:
            seg = int(segments[int(y), int(x)])
            d["neg"] = [s for s in d["neg"] if s != seg] if seg in d["neg"] else d["neg"] + [seg]
        else:
            d["pos"] = d["pos"] + [(x, y)]


@st.cache_data(show_spinner=False, max_entries=256)
def _segments(source: str, example_id: int, _image) -> np.ndarray:
    return superpixels(_image)


@st.cache_data(show_spinner=False, max_entries=256)
def _cam(wb_id: str, version: int, example_id: int, target: str) -> np.ndarray:
    wb = get_registry().get(wb_id)
    with wb.lock:
        model = wb.model
    x = wb.data.images[example_id:example_id + 1]
    y = wb.data.labels[example_id:example_id + 1] if target == "true" else None
    return gradcam(for_inference(model), x, y).cams[0].cpu().numpy()  # never switch the shared model's mode


# ----------------------------------------------------------------------------- questionnaires
LIKERT = [1, 2, 3, 4, 5]
TLX_STEPS = list(range(0, 101, 5))


def questionnaire(flow: ParticipantFlow) -> None:
    step = flow.step
    order = flow.participant.conditions
    about = (f"part {order.index(step.condition) + 1}" if step.condition else "the study as a whole")
    st.title("Questionnaire")
    st.caption(f"About {about}.")
    # a form per step: one form key reused by the next questionnaire made its radios re-mount without end
    with st.container(key="study-questionnaire"), st.form(key=ss_key(flow, "form")):
        if step.instrument == "sus":
            st.markdown("1 = strongly disagree, 5 = strongly agree")
            answers = [st.radio(f"{i + 1}. {text}", LIKERT, index=None, horizontal=True, key=ss_key(flow, "sus", i))
                       for i, text in enumerate(SUS_ITEMS)]
        elif step.instrument == "tlx":
            st.markdown("0 = very low, 100 = very high (performance: 0 = perfect, 100 = failure)")
            # the 21 marks of the paper scale, none chosen at first: a slider has no empty state, and one
            # that starts at 50 could be sent untouched as if answered (the form refuses an unanswered scale)
            answers = {d: st.radio(text, TLX_STEPS, index=None, horizontal=True, key=ss_key(flow, "tlx", d))
                       for d, text in TLX_DIMENSIONS.items()}
        else:
            st.markdown("1 = strongly disagree, 5 = strongly agree")
            answers = {}
            for item in flow.design["likert_items"]:
                key = ss_key(flow, "lik", item["id"])
                if item["kind"] == "likert":
                    answers[item["id"]] = st.radio(f"{item['id']}. {item['text']}", LIKERT, index=None,
                                                   horizontal=True, key=key)
                elif item["kind"] == "choice":
                    answers[item["id"]] = st.radio(f"{item['id']}. {item['text']}", item["options"], index=None,
                                                   horizontal=True, key=key)
                else:
                    answers[item["id"]] = st.text_area(f"{item['id']}. {item['text']}", key=key)
        sent = st.form_submit_button("Submit", type="primary")
    if not sent:
        return
    missing = ([i + 1 for i, a in enumerate(answers) if a is None] if isinstance(answers, list) else
               [k for k, v in answers.items() if v is None])
    if step.instrument == "tlx":  # the scales have names, not numbers
        missing = [TLX_DIMENSIONS[d].split(":")[0].lower() for d in missing]
    if missing:
        st.error(f"Please answer every question (missing: {', '.join(map(str, missing))}).")
        return
    score = sus_score(answers) if step.instrument == "sus" else raw_tlx(answers) if step.instrument == "tlx" else None
    flow.studies.save_answers(flow.token, step.answers_step, step.instrument, answers, score)  # on disk first
    flow.advance(expected=flow.index)
    st.rerun()
