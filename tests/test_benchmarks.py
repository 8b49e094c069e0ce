"""The benchmark scripts' own logic (their timings are measured, not tested)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pytest  # noqa: E402
import torch  # noqa: E402

from profile_step import OperatorTimer, describe  # noqa: E402
from profile_step import main as profile_main  # noqa: E402
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


def test_operator_timer_counts_each_operator_with_its_inputs():
    a = torch.randn(8, 4)
    b = torch.randn(4, 3)
    timer = OperatorTimer()
    with timer:
        torch.mm(a, b)
        torch.mm(a, b)
        torch.relu(a)
    calls = {name: n for (name, _), n in timer.calls.items()}
    assert calls == {"mm": 2, "relu": 1}
    assert timer.calls["mm", "(8, 4)f (4, 3)f"] == 2
    assert all(s >= 0 for s in timer.seconds.values())


def test_describe_names_the_layout():
    x = torch.zeros(2, 3, 4, 5)
    assert describe(x) == "(2, 3, 4, 5)fN"
    assert describe(x.contiguous(memory_format=torch.channels_last)) == "(2, 3, 4, 5)fL"
    assert describe(x[:, :2]) == "(2, 2, 4, 5)fS"
    assert describe(torch.zeros(3, dtype=torch.int64)) == "(3,)i"


def test_profile_step_reports_operators_and_the_convolution_share(tmp_path, capsys):
    out = tmp_path / "profile.txt"
    assert profile_main(["--model", "vae", "--steps", "1", "--precision", "fp32", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "timer ops" in text and "convolution_backward" in text
    assert "convolutions" in text.splitlines()[-1] and "% of operator time" in text


def test_profile_step_refuses_a_bad_step_count():
    with pytest.raises(SystemExit):
        profile_main(["--steps", "0"])
