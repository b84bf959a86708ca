"""core.monitor.live.freeze_saving: time per epoch before vs after a freezing change,
compared like with like (the first epoch of each phase left out), with its spread, and
"too few epochs to tell" where the epochs cannot tell."""
from __future__ import annotations

import math

import pytest

from core.monitor.live import EpochTimeSpread, epoch_phases, freeze_changes, freeze_saving


def _epochs(times, frozen_from=None, groups=("conv1",)):
    """EpochInfo dicts; epochs from index ``frozen_from`` on end with ``groups`` frozen."""
    return [{"epoch": i, "epoch_time": t, "frozen": tuple(groups) if frozen_from is not None and i >= frozen_from else (),
             "val_acc": 0.5, "train_acc": 0.5, "lr": 0.1} for i, t in enumerate(times)]


def test_slow_first_epoch_is_left_out_and_the_spread_is_given():
    # epoch 0 carries warm-up (9.5 s); conv1 frozen during epoch 4 (mixed)
    epochs = _epochs([9.5, 2.2, 2.3, 2.25, 1.9, 1.40, 1.35, 1.38], frozen_from=4)
    s = freeze_saving(epochs)
    assert s.before.epochs == (1, 2, 3) and s.after.epochs == (5, 6, 7) and s.left_out == (0, 4)
    assert s.before.median == pytest.approx(2.25) and s.after.median == pytest.approx(1.38)
    assert (s.before.low, s.before.high) == (2.2, 2.3)
    assert s.before.q1 == pytest.approx(2.225) and s.before.q3 == pytest.approx(2.275)
    assert s.saving == pytest.approx(1 - 1.38 / 2.25) and s.ratio == pytest.approx(1.38 / 2.25)
    assert s.reason is None
    assert (s.frozen_before, s.frozen_after) == ((), ("conv1",))


def test_a_side_with_one_comparable_epoch_is_too_few_to_tell():
    # before the change only the warm-up epoch and one more: the old rule kept the 9.5 s
    # warm-up when it was alone, or compared one epoch with three
    for times in ([9.5, 1.9, 1.4, 1.35, 1.38], [9.5, 2.2, 1.9, 1.4, 1.35, 1.38]):
        s = freeze_saving(_epochs(times, frozen_from=2))
        assert s.before.n == 1 and s.after.n >= 2
        assert s.saving is None and s.ratio is None
        assert s.reason.startswith("too few epochs to tell") and "1 comparable epoch before" in s.reason
    one_after = freeze_saving(_epochs([9.5, 2.2, 2.3, 1.9, 1.4], frozen_from=3))
    assert one_after.saving is None and one_after.after.n == 1 and "too few epochs to tell" in one_after.reason


def test_overlapping_spreads_are_too_few_to_tell():
    # a noisy machine: the epochs before and after overlap, whatever their medians say
    s = freeze_saving(_epochs([9.0, 2.0, 1.2, 2.1, 1.3, 1.9, 1.1, 2.2, 1.2], frozen_from=5))
    assert s.before.median != s.after.median
    assert s.saving is None and "overlap" in s.reason and s.reason.startswith("too few epochs to tell")


def test_between_phases_are_left_out_and_sets_are_named():
    # frozen from the start (conv1), conv2 added during epoch 3, fc1 during epoch 5
    epochs = _epochs([5.0, 2.0, 2.1, 1.8, 1.6, 1.5, 1.0, 1.1, 1.05], frozen_from=0)
    for e in epochs[3:]:
        e["frozen"] = ("conv1", "conv2")
    for e in epochs[5:]:
        e["frozen"] = ("conv1", "conv2", "fc1")
    assert [len(p) for p in epoch_phases(epochs)] == [3, 2, 4]
    assert [c[0] for c in freeze_changes(epochs)] == [3, 5]
    s = freeze_saving(epochs)
    assert s.before.epochs == (1, 2) and s.after.epochs == (6, 7, 8) and s.left_out == (0, 3, 4, 5)
    assert s.frozen_before == ("conv1",) and s.frozen_after == ("conv1", "conv2", "fc1")
    assert s.saving == pytest.approx(1 - 1.05 / 2.05)


def test_no_change_is_none_and_bad_settings_are_refused():
    assert freeze_saving(_epochs([9.5, 2.0, 2.1])) is None
    assert freeze_saving([]) is None
    with pytest.raises(ValueError, match="min_epochs"):
        freeze_saving(_epochs([1.0, 1.0, 1.0], frozen_from=1), min_epochs=0)
    empty = EpochTimeSpread.of([], [])
    assert empty.n == 0 and math.isnan(empty.median)
