import platform
import subprocess
import sys

import pytest
import torch

from cifargen.errors import ConfigError
from cifargen.runtime import resolve_device, resolve_precision


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_for_reuse_stops_the_page_faults_of_large_blocks():
    # In a fresh process, so the setting does not leak into other tests: allocate and free
    # blocks the size of activations many times and count the minor page faults they cost.
    script = """
import resource, sys, torch
from cifargen.runtime import keep_freed_memory_for_reuse
if sys.argv[1] == "1":
    assert keep_freed_memory_for_reuse() is True
def step():  # a step's activations: several 8 MiB blocks alive together, then all freed
    blocks = [torch.ones(2 * 2 ** 20) for _ in range(4)]
    del blocks
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {flag: int(subprocess.run([sys.executable, "-c", script, flag], capture_output=True, text=True,
                                       check=True).stdout) for flag in ("0", "1")}
    # Without the setting the 80 blocks of 2,048 pages each usually fault in afresh (163,840 faults;
    # some runs reuse them anyway), with it they never should.
    assert faults["1"] < 20 * 4 * 2048 // 10, faults


def test_keep_freed_memory_for_reuse_reports_whether_glibc_took_it():
    script = "import platform; from cifargen.runtime import keep_freed_memory_for_reuse as k; " \
             "print(k() == (platform.libc_ver()[0] == 'glibc'))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_unknown_device_and_precision_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="auto, bf16 or fp32"):
        resolve_precision("half", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) is None


@pytest.mark.parametrize("name, says", [
    ("foo", "unknown device"), ("cuda:x", "unknown device"), ("", "unknown device"), ("meta", "unsupported device"),
    ("cpu:1", "no cpu device 1"),
])
def test_devices_that_do_not_exist_are_refused_in_one_line(name, says):
    with pytest.raises(ConfigError, match=says) as caught:
        resolve_device(name)
    assert "\n" not in str(caught.value)


def test_cuda_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="has 1 CUDA"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_mps_is_refused_where_absent_and_beyond_its_one_device(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="no mps device 1"):
        resolve_device("mps:1")
    assert resolve_device("mps") == torch.device("mps")
