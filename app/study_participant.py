"""Participant mode's logic apart from drawing (the page is ``pages/participant.py``, shown alone
for ``?study=<token>``): the step's session-state keys, the condition's fresh workbench, the
attention condition's image as an :class:`app.attention_annotate.AnnotationView` whose gestures are
logged through :mod:`core.study.attention`, and the questionnaire's checks. Latent and grid
conditions are :mod:`app.study_tasks`."""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from app.attention_annotate import AnnotationView, new_draft
from app.state import get_base_models, get_budget, get_dataset, get_registry, get_store
from core.explain.gradcam import gradcam
from core.explain.superpixels import superpixels
from core.models import for_inference
from core.session.workbench import Workbench
from core.study.attention import AttentionCondition
from core.study.design import TLX_DIMENSIONS, raw_tlx, sus_score
from core.study.flow import ParticipantFlow

QUERY_KEY = "study"
IMAGE_PX = 384  # the annotated picture's larger side (app.study_tasks draws its pictures as large)
FINISHED = ("done", "failed", "diverged", "stopped")


class NotReady(Exception):
    """The study's base model is still training (the first participant on a fresh server)."""

    def __init__(self, job) -> None:
        super().__init__("the study's model is being prepared")
        self.job = job


def fresh_workbench(design: dict, token: str) -> str:
    """A new workbench on the study's base model for one condition (NotReady while it trains)."""
    data = get_dataset(design["dataset"])
    status = get_base_models().status(data, design["dataset"], design["arch"], train=True)
    if status.model is None:
        raise NotReady(status.job)
    wb = Workbench.create(get_store(), data, design["dataset"], status.model, base_checkpoint=status.path,
                          settings={"device": "cpu", "study_participant": True}, metrics=status.metrics,
                          description="study base model", budget=get_budget())
    return get_registry().add(wb).id


def step_prefix(flow: ParticipantFlow) -> str:
    """The start of every key of this participant's step. The token's "_" become "-": a token can
    hold "__", which a bidirectional component's key must not (Streamlit refuses it)."""
    return "-".join(["study", flow.token[:8].replace("_", "-"), str(flow.index)])


def ss_key(flow: ParticipantFlow, name: str, *parts) -> str:
    """A session-state / widget key for this participant's step (see :func:`step_prefix`)."""
    return "-".join([step_prefix(flow), name, *map(str, parts)])


def default_instructions(cond: AttentionCondition) -> str:
    """What an attention condition without its own instructions tells the participant."""
    if cond.settings.mode == "click":
        return ("Left-click where the model **should** look; right-click a region it should **ignore**. "
                "Then press Confirm.")
    return ("Click around the object to draw a polygon; click its first point again to close it. "
            "Then press Confirm.")


def finish_attention(cond: AttentionCondition) -> None:
    """Continue after the last image: close the round and fine-tune on what was confirmed (the
    page then shows its progress), or, in the practice round or with nothing confirmed, go on."""
    if cond.confirmed() and not cond.practice:
        rnd = cond.round()
        rnd.closed = True
        from core.feedback.attention.workflow import save_round

        save_round(cond.wb, rnd)
        cond.start_fine_tune()
    else:
        cond.finish(expected=cond.flow.index)


def annotation_view(flow: ParticipantFlow, cond: AttentionCondition, current: int) -> AnnotationView:
    """The attention condition's image ``current`` as the annotation component draws it: every
    gesture logged through the condition before the draft changes; Undo, Clear and Confirm
    (Confirm only, in polygon mode)."""
    wb, data = cond.wb, cond.wb.data
    image, target = data.images[current], cond.settings.target
    draft_key = ss_key(flow, "draft", current)
    polygon = cond.settings.mode == "polygon"
    return AnnotationView(
        prefix="study", item_prefix=step_prefix(flow), example_id=current, image=image,
        cam=_cam(wb.id, wb.current_version, current, target), segments=_segments(wb.data_source, current, image),
        label=int(data.labels[current]), mode=cond.settings.mode, opacity=cond.settings.opacity,
        draft=lambda: st.session_state.setdefault(draft_key, new_draft()),
        picture_key=(wb.id, wb.current_version, current, target, cond.settings.opacity),
        on_gesture=lambda kind, payload: cond.gesture(kind, current, payload),
        caption=lambda d: ("Green dots: where the model should look. Red hatching: what it should ignore. "
                           "Heat map: where it looks now."),
        buttons=("", "", "confirm") if polygon else ("undo", "clear", "confirm"), confirm_label="Confirm",
        operations="marks")


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


def missing_answers(instrument: str, answers: list | dict) -> list:
    """The questions not answered (SUS by number, TLX scales by name, Likert items by id)."""
    missing = ([i + 1 for i, a in enumerate(answers) if a is None] if isinstance(answers, list) else
               [k for k, v in answers.items() if v is None])
    if instrument == "tlx":  # the scales have names, not numbers
        missing = [TLX_DIMENSIONS[d].split(":")[0].lower() for d in missing]
    return missing


def score_of(instrument: str, answers: Any) -> float | None:
    """The questionnaire's score (SUS 0-100, raw TLX), None for Likert items."""
    return sus_score(answers) if instrument == "sus" else raw_tlx(answers) if instrument == "tlx" else None
