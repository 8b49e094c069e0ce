import pytest

from cifargen.errors import ConfigError
from cifargen.schedules import KLSchedule, lr_milestones


@pytest.mark.parametrize("epochs", [3, 30, 60])
def test_geometric_kl_schedule_warms_up_holds_then_ramps(epochs):
    weights = KLSchedule().weights(epochs)
    first_ramp = max(2, round(2 / 3 * epochs))
    assert weights[0] == 0.0
    assert weights[1:first_ramp] == pytest.approx([1e-4] * (first_ramp - 1))  # the hold at 1e-4
    assert weights[-1] == pytest.approx(1.0)
    ramp = weights[first_ramp - 1:]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    ratios = [b / a for a, b in zip(ramp, ramp[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # geometric: a constant ratio


def test_ramp_from_zero_is_the_assignment_schedule():
    weights = KLSchedule(ramp_from=0).weights(10)
    assert weights[:2] == pytest.approx([0.0, 1e-4])
    assert weights[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(weights[1:], weights[2:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_linear_kl_schedule():
    weights = KLSchedule(shape="linear", ramp_from=0).weights(5)
    assert weights == pytest.approx([0.0, 1e-4, 1e-4 + (1 - 1e-4) / 3, 1e-4 + 2 * (1 - 1e-4) / 3, 1.0])


def test_bad_schedule_is_refused():
    with pytest.raises(ConfigError):
        KLSchedule(shape="cosine")
    with pytest.raises(ConfigError):
        KLSchedule(start=0.0)
    with pytest.raises(ConfigError):
        KLSchedule(ramp_from=1.0)


def test_lr_milestones():
    assert lr_milestones(60, (40 / 60, 50 / 60)) == [40, 50]
    assert lr_milestones(30, (40 / 60, 50 / 60)) == [20, 25]
