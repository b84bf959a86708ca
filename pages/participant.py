"""Participant mode (``?study=<token>``): the one page a study participant sees. It draws the
participant's current step (instructions, a condition of attention clicking, latent editing or
grid feedback, a questionnaire, the end) and turns gestures into calls on
:mod:`core.study.attention` (latent and grid: :mod:`app.study_tasks` on :mod:`core.study.latent`
and :mod:`core.study.grid`), which log each one before the page reacts. Progress is in the store,
so a refresh or a server restart resumes it. The logic apart from drawing is :mod:`app.study_participant`.
"""
from __future__ import annotations

import streamlit as st

from app import study_tasks
from app.attention_annotate import annotate
from app.state import get_registry, get_store
from app.study_participant import (
    FINISHED,
    QUERY_KEY,
    NotReady,
    annotation_view,
    default_instructions,
    finish_attention,
    fresh_workbench,
    missing_answers,
    score_of,
    ss_key,
)
from core.study.attention import AttentionCondition
from core.study.design import SUS_ITEMS, TLX_DIMENSIONS
from core.study.flow import ParticipantFlow
from core.study.grid import GridCondition
from core.study.latent import LatentCondition
from core.study.store import StudyError, StudyStore

LIKERT = [1, 2, 3, 4, 5]
TLX_STEPS = list(range(0, 101, 5))
TASKS = {"attention": AttentionCondition, "latent": LatentCondition, "grid": GridCondition}


def intro(flow: ParticipantFlow) -> None:
    """The welcome step: the study's introduction and Start."""
    st.title("Welcome")
    st.markdown(flow.design["intro"] or "In this study you will show an image classifier what it gets wrong, in "
                f"{len(flow.participant.conditions)} parts with a short questionnaire after each. "
                "Each part starts with its instructions.")
    if st.button("Start", type="primary", key="study-start"):
        flow.advance(expected=flow.index)
        st.rerun()


def condition(flow: ParticipantFlow) -> None:
    """A condition (or the practice round): its instructions, then its task's items."""
    design, step, task = flow.design, flow.step, flow.task()
    slot = "practice" if step.kind == "practice" else step.condition
    if slot in flow.studies.missing_workbenches(flow.token):  # deleted or lost: never a traceback
        st.error("The model of this part of the study is no longer on the server, so it cannot go on from here. "
                 "Please tell the researcher: they can reset your link in Study admin (or give you a new one). "
                 "Your answers so far are kept until then.")
        return
    try:
        wb = get_registry().get(flow.start_condition(lambda: fresh_workbench(design, flow.token)))
    except NotReady as exc:
        st.info("Preparing the study's model (once per server). This page continues by itself.")
        wait_for_base(exc.job)
        return
    try:
        cond = TASKS[task](flow, wb)
    except StudyError as exc:  # a design the task cannot run (settings checked by the library)
        st.error(f"This part cannot start: {exc}. Ask the researcher to fix the study's design.")
        return
    info = next(c for c in design["conditions"] if c["name"] == step.condition)
    st.title("Practice round" if cond.practice else f"Part {flow.participant.conditions.index(step.condition) + 1}")
    st.markdown(info["instructions"] or (default_instructions(cond) if task == "attention"
                                         else study_tasks.default_instructions(cond)))
    if flow.time_left() is not None:
        countdown(flow.token, flow.index)
    job = wb.jobs.current
    if job is not None and job.running:
        fine_tune_progress(flow, job)
    elif task != "attention":
        study_tasks.run(flow, cond, job)
    else:
        attention_condition(flow, cond, job)


def attention_condition(flow: ParticipantFlow, cond: AttentionCondition, job) -> None:
    """The next image to annotate; once none is left (or the time is up), Continue."""
    if job is not None and job.status in FINISHED and cond.round().closed:
        cond.finish(expected=flow.index)
        st.rerun()
    current = cond.current()
    if current is None or flow.condition_finished():
        st.success("This part is done." if current is None else "The time for this part is up.")
        if st.button("Continue", type="primary", key="study-finish"):
            finish_attention(cond)
            st.rerun()
        return
    cond.show(current)  # the clock for this image starts at its first showing, and survives a refresh
    data = cond.wb.data
    with st.container(key="study-task"):
        st.markdown(f"This image shows **{data.classes[int(data.labels[current])]}**.")
        done = annotate(annotation_view(flow, cond, current))
    if done.annotation is not None:
        cond.confirm(done.annotation)  # stored, logged and counted before the next image is drawn
        st.rerun()


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
    """The study's base model training (once per server), until it is ready."""
    view = job.view() if job is not None else None
    if view is None or view["status"] in FINISHED:
        st.rerun(scope="app")  # ready (or a new try starts)
    st.progress(view["progress"], text=f"Training the study's model: {view['progress']:.0%}")


@st.fragment(run_every=1.0)
def fine_tune_progress(flow: ParticipantFlow, job) -> None:
    """The condition's fine-tune (its place in the queue while it waits), until it ends."""
    view = job.view()
    with st.container(key="study-fine-tune"):
        where = f" (place {view['queue_position']} in the queue)" if view.get("queue_position") else ""
        what = {"latent": "moves", "grid": "reviews"}.get(flow.task(), "annotations")
        st.progress(view["progress"], text=f"Updating the model with your {what}{where}: {view['progress']:.0%}")
    if not job.running:
        st.rerun(scope="app")


def questions(flow: ParticipantFlow) -> list | dict:
    """The questionnaire's questions, drawn; their answers so far (None: not answered)."""
    if flow.step.instrument == "sus":
        st.markdown("1 = strongly disagree, 5 = strongly agree")
        return [st.radio(f"{i + 1}. {text}", LIKERT, index=None, horizontal=True, key=ss_key(flow, "sus", i))
                for i, text in enumerate(SUS_ITEMS)]
    if flow.step.instrument == "tlx":
        st.markdown("0 = very low, 100 = very high (performance: 0 = perfect, 100 = failure)")
        # the 21 marks of the paper scale, none chosen at first: a slider has no empty state, and one
        # that starts at 50 could be sent untouched as if answered (the form refuses an unanswered scale)
        return {d: st.radio(text, TLX_STEPS, index=None, horizontal=True, key=ss_key(flow, "tlx", d))
                for d, text in TLX_DIMENSIONS.items()}
    st.markdown("1 = strongly disagree, 5 = strongly agree")
    answers = {}
    for item in flow.design["likert_items"]:
        label, key = f"{item['id']}. {item['text']}", ss_key(flow, "lik", item["id"])
        if item["kind"] in ("likert", "choice"):
            options = LIKERT if item["kind"] == "likert" else item["options"]
            answers[item["id"]] = st.radio(label, options, index=None, horizontal=True, key=key)
        else:
            answers[item["id"]] = st.text_area(label, key=key)
    return answers


def questionnaire(flow: ParticipantFlow) -> None:
    """A questionnaire step: its form; answers saved (all of them, on disk) before the next step."""
    step = flow.step
    about = f"part {flow.participant.conditions.index(step.condition) + 1}" if step.condition else "the study as a whole"
    st.title("Questionnaire")
    st.caption(f"About {about}.")
    # a form per step: one form key reused by the next questionnaire made its radios re-mount without end
    with st.container(key="study-questionnaire"), st.form(key=ss_key(flow, "form")):
        answers = questions(flow)
        sent = st.form_submit_button("Submit", type="primary")
    if not sent:
        return
    missing = missing_answers(step.instrument, answers)
    if missing:
        st.error(f"Please answer every question (missing: {', '.join(map(str, missing))}).")
        return
    flow.studies.save_answers(flow.token, step.answers_step, step.instrument, answers,
                              score_of(step.instrument, answers))  # on disk first
    flow.advance(expected=flow.index)
    st.rerun()


# ---------------------------------------------------------------- the page
st.html("<style>[data-testid='stSidebar'], [data-testid='stSidebarCollapsedControl'], "
        "[data-testid='stExpandSidebarButton'] { display: none; }</style>")  # no app chrome for participants
try:
    participant_flow = ParticipantFlow(StudyStore(get_store()), st.query_params.get(QUERY_KEY, ""))
except StudyError as exc:
    st.error(f"{exc}. Ask the researcher for your link.")
    st.stop()
with st.container(key="study-progress"):
    st.caption(f"Study · participant {participant_flow.participant.number + 1} · **{participant_flow.label()}**")
    st.progress(participant_flow.index / max(1, len(participant_flow.steps) - 1),
                text=f"Step {participant_flow.index + 1} of {len(participant_flow.steps)}")
step = participant_flow.step
if ss_key(participant_flow, "viewed") not in st.session_state:  # one page view per step and tab
    st.session_state[ss_key(participant_flow, "viewed")] = True
    participant_flow.studies.log(participant_flow.token, step.condition if step.kind == "condition" else "",
                                 "page_view", None, {"step": participant_flow.index, "kind": step.kind})
if step.kind == "intro":
    intro(participant_flow)
elif step.kind in ("condition", "practice"):
    condition(participant_flow)
elif step.kind == "questionnaire":
    questionnaire(participant_flow)
else:
    st.title("Thank you")
    st.success("You have finished the study. You can close this tab.")
