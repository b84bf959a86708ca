"""The feedback kinds' settings keep their optimiser and loop in one TrainConfig (``train``);
the page and study settings, which are forms saved by field name, build it. These pin the
configs the defaults give (the papers' values) and that seeding changes the seed alone."""
from __future__ import annotations

import dataclasses

import pytest

from core.engine import TrainConfig
from core.feedback.attention.workflow import FINE_TUNE, FineTuneSettings, PageSettings
from core.feedback.grid.job import GridPageSettings
from core.feedback.latent.workflow import UPDATE, UpdateSettings
from core.feedback.selection.loss import RETRAIN, RetrainSettings, retrain_config
from core.study.grid import GridStudySettings
from core.study.latent import LatentStudySettings


def _opt(c: TrainConfig) -> tuple:
    return c.epochs, c.lr, c.batch_size, c.momentum, c.weight_decay, c.seed, c.device


def test_the_defaults_give_the_papers_fine_tunes():
    assert _opt(FineTuneSettings().config()) == (20, 0.01, 32, 0.9, 5e-4, 0, None)
    # the page's round: the paper's loop at lr 0.003, with 112 rehearsal images (chosen on the tuning
    # base seeds, core/feedback/attention/workflow.py ROUND_LR)
    page = PageSettings().fine_tune(seed=3, device="cpu")
    assert _opt(page.config()) == (20, 0.003, 32, 0.9, 5e-4, 3, "cpu") and page.rehearsal == 112
    assert _opt(UpdateSettings().train) == (2, 0.04, 64, 0.9, 5e-4, 0, None)
    assert _opt(LatentStudySettings().update(device="cpu").train) == (2, 0.04, 64, 0.9, 5e-4, 0, "cpu")
    r = RetrainSettings()
    assert _opt(retrain_config(r)) == (1, 0.003, 48, 0.9, 5e-4, 0, None) and r.fill_per_batch == 48
    assert _opt(GridPageSettings().config(5, "cpu")) == (5, 0.005, 64, 0.9, 5e-4, 5, "cpu")
    assert GridStudySettings().fine_tune_config(2) == GridStudySettings().page.config(2)


def test_page_and_study_fields_reach_the_train_config():
    ft = dataclasses.replace(PageSettings(), lr=0.02, epochs=4, w_g=0.5).fine_tune(seed=1)
    assert (ft.train.lr, ft.train.epochs, ft.train.batch_size, ft.w_g) == (0.02, 4, FINE_TUNE.batch_size, 0.5)
    up = LatentStudySettings(epochs=1, lr=0.1, momentum=0.5, w_dis=2.0).update()
    assert (up.train.epochs, up.train.lr, up.train.momentum, up.train.batch_size, up.w_dis) == (1, 0.1, 0.5, 64, 2.0)


@pytest.mark.parametrize("settings", [FineTuneSettings(), UpdateSettings(), RetrainSettings()])
def test_seeded_changes_the_seed_and_nothing_else(settings):
    other = settings.seeded(7)
    assert other.train.seed == 7 and settings.train.seed == 0
    assert dataclasses.replace(other, train=dataclasses.replace(other.train, seed=0)) == settings


def test_each_settings_object_has_its_own_train_config():
    a, b = UpdateSettings(), UpdateSettings()
    assert a.train == b.train == UPDATE and a.train is not b.train and a.train is not UPDATE
    assert RetrainSettings().train == RETRAIN and RetrainSettings().train is not RETRAIN


def test_retrain_settings_check_the_mixed_batch():
    with pytest.raises(ValueError, match="smaller than batch_size"):
        RetrainSettings(selected_per_batch=16, train=dataclasses.replace(RETRAIN, batch_size=16))
    with pytest.raises(ValueError, match="lr must be positive"):
        RetrainSettings(train=dataclasses.replace(RETRAIN, lr=0.0))
