import math

import pytest

from recog.engine.schedule import epochs_to_steps, lr_at


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "linear", "constant"])
def test_schedules_start_low_or_at_base_and_never_exceed_base(schedule: str) -> None:
    lrs = [lr_at(s, 100, 0.1, schedule, warmup_steps=10) for s in range(100)]
    assert max(lrs) == pytest.approx(0.1, rel=1e-6)
    assert lrs[0] < 0.1 / 5  # warm-up starts small
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:11]))  # rising through warm-up


def test_decays_end_at_final_fraction() -> None:
    assert lr_at(99, 100, 0.1, "linear", final_lr=0.1) == pytest.approx(0.01)
    assert lr_at(99, 100, 0.1, "cosine", final_lr=0.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(99, 100, 0.1, "onecycle") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(99, 100, 0.1, "constant") == 0.1


def test_onecycle_peaks_at_thirty_percent_by_default() -> None:
    lrs = [lr_at(s, 1000, 1.0, "onecycle") for s in range(1000)]
    assert max(range(1000), key=lrs.__getitem__) == 300


def test_cosine_midpoint_is_half() -> None:
    assert lr_at(50, 101, 2.0, "cosine") == pytest.approx(1.0)
    assert not math.isnan(lr_at(0, 1, 1.0, "cosine"))


def test_epochs_to_steps_rounds_fractional_epochs() -> None:
    assert epochs_to_steps(1.5, 49) == 74 and epochs_to_steps(0, 49) == 0 and epochs_to_steps(None, 49) is None
