"""The benchmark scripts' own logic (their timings are measured, not tested)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from time_to_quality import time_to_target  # noqa: E402


def history(values, seconds=60.0):
    return [{"epoch": i + 1, "seconds": seconds, "test": {"rec": v, "accuracy": v}} for i, v in enumerate(values)]


def test_time_to_target_lower_is_better():
    metrics = {"best_metric": "rec", "history": history([0.80, 0.72, 0.689, 0.65])}
    assert time_to_target(metrics, 0.69) == {"epoch": 3, "seconds": 180.0, "value": 0.689}
    assert time_to_target(metrics, 0.60) is None


def test_time_to_target_higher_is_better():
    metrics = {"best_metric": "accuracy", "history": history([0.4, 0.7, 0.6], seconds=30.0)}
    assert time_to_target(metrics, 0.69) == {"epoch": 2, "seconds": 60.0, "value": 0.7}
