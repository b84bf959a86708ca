"""A new feedback kind in a few lines: annotations, a loss term, a description; the workbench
does the rest (``Workbench.start_training(kind, annotations, FineTune(...))``). The kind here
is "calm": mark images the model should be less sure about; its term is the mean squared
logit on them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.engine import Batch, TrainConfig
from core.feedback import CommonPlan, FeedbackKind
from core.models import build_model
from core.session.runs import FineTune
from core.session.store import Store
from core.session.workbench import Workbench


# ---------------------------------------------------------------- the kind (quoted in the docs)
@dataclass(frozen=True)
class Calm:
    """One image the model should be less sure about."""

    example_id: int


class CalmKind(CommonPlan):  # CommonPlan: CE on the annotated images + this kind's term
    name = "calm"
    annotation_type = Calm

    def to_payload(self, annotation: Calm) -> tuple[int, dict]:
        return annotation.example_id, {}

    def from_payload(self, example_id: int, payload: dict) -> Calm:
        return Calm(example_id)

    def loss_term(self, data, annotations, settings=None):
        images = data.images[torch.as_tensor([a.example_id for a in annotations])]
        return lambda model, batch: model(images.to(batch.x.device)).pow(2).mean()

    def describe(self, annotations) -> str:
        return f"calm: {len(annotations)} images"


CALM = CalmKind()
# ---------------------------------------------------------------- end of the kind


def test_a_new_kind_fine_tunes_through_the_workbench(workspace, tiny_data):
    assert isinstance(CALM, FeedbackKind)
    wb = Workbench.create(Store(workspace), tiny_data, "tiny", build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0))
    ids = [int(i) for i in tiny_data.ids("pool")[:4]]
    annotations = [CALM.from_payload(*CALM.to_payload(Calm(i))) for i in ids]
    term = CALM.loss_term(tiny_data, annotations)
    x, y = tiny_data.split("train")
    batch = Batch(x[:4], y[:4], torch.arange(4), None, None)
    with torch.no_grad():
        before = float(term(wb.model, batch))
    config = TrainConfig(epochs=3, batch_size=4, lr=0.05, weight_decay=0.0)
    job = wb.start_training(CALM, annotations, FineTune(config, cls_weight=0.0))  # the term alone
    assert job.wait(60) and job.status == "done", job.error
    record = wb.version(1)
    assert record.feedback["kind"] == "calm" and record.feedback["example_ids"] == ids
    assert record.description == "calm: 4 images" and set(job.context["terms"]) == {"calm"}
    v0 = dict(wb._model_of(0).named_parameters())
    assert any(not torch.equal(v0[k], v) for k, v in wb.model.named_parameters())  # trainable weights, not buffers
    with torch.no_grad():
        assert float(term(wb.model, batch)) < before  # the model is less sure about the marked images
