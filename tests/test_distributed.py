"""DistributedDataParallel on CPU with the gloo backend and 2 processes, launched by torchrun."""

import json
import subprocess
import sys

import pytest
import torch

from ddp_grad_worker import global_batch, gradients, make_recipe


def torchrun(*args, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_first_step_gradients_match_single_process(tmp_path):
    from pathlib import Path

    worker = Path(__file__).with_name("ddp_grad_worker.py")
    result = torchrun(str(worker), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(2)]

    from cifargen import default_config

    recipe = make_recipe(default_config("vae", precision="fp32", threads=1, batch_size=16))
    x, y = global_batch()
    recipe.train_step(x.contiguous(memory_format=torch.channels_last), y)
    single = gradients(recipe)
    for name, grad in single.items():
        # DDP averages: both ranks hold the same gradient, equal to the whole batch's.
        assert torch.allclose(distributed[0][name], distributed[1][name]), name
        assert torch.allclose(distributed[0][name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("model", ["vae", "acgan"])
def test_two_process_run_writes_what_one_process_writes(model, cifar_root, tmp_path):
    args = ["--data-dir", str(cifar_root), "--epochs", "1", "--limit-train", "256", "--limit-test", "120",
            "--threads", "1", "--no-progress"]
    result = torchrun("-m", "cifargen", "train", model, "--out", str(tmp_path / "ddp"), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "cifargen", "train", model, "--out", str(tmp_path / "one"), *args],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    names = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert names(tmp_path / "ddp") == names(tmp_path / "one")
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["finished"]
