import json

import numpy as np
import pytest
import torch

from cifargen import default_config, train
from cifargen.errors import ConfigError, DataError, TrainingError

QUICK = dict(limit_train=256, limit_test=120, progress=False, threads=2)


def run(model, cifar_root, out, **kw):
    return train(default_config(model, data_dir=str(cifar_root), out=str(out), **{**QUICK, **kw}))


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_vae_end_to_end(model, cifar_root, tmp_path):
    metrics = run(model, cifar_root, tmp_path, epochs=1)
    for name in ("E1.png", "losses.png", "total_loss.png", "random.png", "metrics.json", "best.pt", "last.pt"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["finished"] and saved["best_epoch"] == 1 and saved["kl_weight_at_best"] == 0.0
    assert set(saved["best"]) == {"mse", "ssim_loss", "bce", "rec", "kl"}
    assert saved["best"]["rec"] == pytest.approx(saved["best"]["mse"] + saved["best"]["ssim_loss"] + saved["best"]["bce"])
    assert set(saved["history"][0]["train"]) == {"loss", "mse", "ssim_loss", "bce", "rec", "kl"}
    assert saved["kl_weights"] == [0.0] and saved["seed"] == 0 and "wall_time_s" in saved and saved["device"] == "cpu"
    assert metrics["best"] == saved["best"]


@pytest.mark.parametrize("ema_decay", [None, 0.0])  # the default (moving averages), and without them
def test_acgan_end_to_end(cifar_root, tmp_path, ema_decay):
    run("acgan", cifar_root, tmp_path, epochs=1, **({} if ema_decay is None else {"ema_decay": ema_decay}))
    for name in ("E1.png", "loss.png", "accuracy.png", "metrics.json", "best.pt"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    averaged = ema_decay is None
    assert set(saved["best"]) == ({"accuracy", "accuracy_raw"} if averaged else {"accuracy"})
    assert all(0.0 <= value <= 1.0 for value in saved["best"].values())
    assert set(saved["history"][0]["train"]) == {"g_loss", "d_loss", "accuracy"}
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    averages = {"generator_average", "discriminator_average"} if averaged else set()
    assert set(best["models"]) == {"generator", "discriminator"} | averages


def test_an_epoch_logs_the_learning_rate_of_its_last_step(cifar_root, tmp_path):
    # A 2-step warm-up ends inside the 4-step epoch: the epoch logs the full rate, not the warm-up's start.
    vae = run("vae", cifar_root, tmp_path / "vae", epochs=1, warmup_steps=2, warmup_fraction=1.0)
    assert [epoch["lr"] for epoch in vae["history"]] == [pytest.approx(5e-4)]
    # The AC-GAN's rates stay at 2e-4 for the first half of its 8 steps, then fall linearly to 0 at the last.
    gan = run("acgan", cifar_root, tmp_path / "gan", epochs=2, ema_decay=0.0)
    assert [epoch["lr"] for epoch in gan["history"]] == [pytest.approx(2e-4), pytest.approx(0.0, abs=1e-12)]


def test_resume_matches_uninterrupted_run(cifar_root, tmp_path):
    full = run("vae", cifar_root, tmp_path / "full", epochs=3)

    class Killed(Exception):
        pass

    def die_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise Killed

    config = default_config("vae", data_dir=str(cifar_root), out=str(tmp_path / "resumed"), epochs=3, **QUICK)
    with pytest.raises(Killed):
        train(config, log=die_after_first_epoch)
    from cifargen.recipes.vae import VAERecipe

    steps = {"n": 0}
    original = VAERecipe.train_step

    def counting(self, x, y):
        steps["n"] += 1
        return original(self, x, y)

    VAERecipe.train_step = counting
    try:
        resumed = train(default_config("vae", data_dir=str(cifar_root), out=str(tmp_path / "resumed"), epochs=3,
                                       resume=True, **QUICK))
    finally:
        VAERecipe.train_step = original
    assert steps["n"] == 2 * 4  # only epochs 2 and 3 ran (4 steps of 64 each)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["best"] == full["best"]


def test_existing_run_is_not_overwritten(cifar_root, tmp_path):
    run("vae", cifar_root, tmp_path, epochs=1)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="--overwrite"):
        run("vae", cifar_root, tmp_path, epochs=1)
    assert (tmp_path / "metrics.json").read_text() == before


def test_overwrite_keeps_the_old_run_until_the_new_one_has_started(cifar_root, tmp_path):
    run("vae", cifar_root, tmp_path, epochs=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(DataError):  # a limit larger than the data: nothing trained, nothing lost
        run("vae", cifar_root, tmp_path, epochs=1, overwrite=True, limit_train=100_000)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    (tmp_path / "notes.txt").write_text("mine")
    run("vae", cifar_root, tmp_path, epochs=1, overwrite=True)  # a real start replaces the run...
    assert (tmp_path / "notes.txt").read_text() == "mine"  # ...and removes only cifargen's own files


def test_overwrite_with_another_kind_leaves_none_of_the_old_runs_figures(cifar_root, tmp_path):
    run("vae", cifar_root, tmp_path, epochs=1, quality=False)
    assert (tmp_path / "random.png").is_file() and (tmp_path / "total_loss.png").is_file()
    run("acgan", cifar_root, tmp_path, epochs=1, overwrite=True, quality=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"loss.png", "accuracy.png", "E1.png"} <= names
    assert not names & {"random.png", "losses.png", "total_loss.png", "prior.safetensors"}


def test_remove_run_outputs_removes_only_the_recipes_and_the_loops_files(tmp_path):
    from cifargen.training import remove_run_outputs

    for name in ("metrics.json", "last.pt", "E3.png", "random.png", "prior.safetensors", "E3x.png", "mine.png"):
        (tmp_path / name).write_text("x")
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "model.safetensors").write_text("x")
    remove_run_outputs(tmp_path, (r"E\d+\.png", r"random\.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E3x.png", "mine.png"]


def test_an_empty_checkpoint_is_refused_in_one_line_without_a_destructive_hint(tmp_path):
    from cifargen.training import load_checkpoint

    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        load_checkpoint(tmp_path / "last.pt", "cpu")
    message = str(caught.value)
    assert "cannot load checkpoint" in message and "--overwrite" not in message and "\n" not in message


def test_non_finite_loss_stops_with_epoch_and_step(cifar_root, tmp_path, monkeypatch):
    from cifargen.recipes.vae import VAERecipe

    original = VAERecipe.train_step
    calls = {"n": 0}

    def poisoned(self, x, y):
        out = original(self, x, y)
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 2 (4 steps per epoch)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(VAERecipe, "train_step", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 2, step 2.*last good checkpoint .*last.pt \(epoch 1\)") as caught:
        run("vae", cifar_root, tmp_path, epochs=3, batch_size=64)
    assert "--lr" not in str(caught.value)  # no guessed cause
    # What was written before the fault is intact: epoch 1's checkpoint and metrics.
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_completed"] == 1


def _history_without_timings(metrics):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["history"]]


def test_ctrl_c_saves_mid_epoch_and_resume_matches(cifar_root, tmp_path, monkeypatch):
    import os
    import signal

    from cifargen.recipes.vae import VAERecipe

    full = run("vae", cifar_root, tmp_path / "full", epochs=2, batch_size=64)
    original = VAERecipe.train_step
    calls = {"n": 0}

    def interrupting(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 2 (4 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(VAERecipe, "train_step", interrupting)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(default_config("vae", data_dir=str(cifar_root), out=str(tmp_path / "cut"), epochs=2, batch_size=64, **QUICK), log=lines.append)
    assert "interrupted at epoch 2, step 2" in lines[-1]
    assert lines[-1].endswith(f"Continue with: cifargen train vae --resume {tmp_path / 'cut'}")
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["partial"]["next_step"] == 2 and state["epoch"] == 0
    calls["n"] = 100  # no more interrupts; count the steps the resumed run takes
    resumed = train(default_config("vae", data_dir=str(cifar_root), out=str(tmp_path / "cut"), epochs=2,
                                   batch_size=64, resume=True, **QUICK))
    assert calls["n"] == 100 + 2  # only epoch 2's last two steps ran
    assert _history_without_timings(resumed) == _history_without_timings(full)


def test_ctrl_c_during_the_last_epochs_evaluation_stops_before_the_final_outputs(cifar_root, tmp_path, monkeypatch):
    import os
    import signal

    from cifargen.recipes.vae import VAERecipe

    full = run("vae", cifar_root, tmp_path / "full", epochs=2, batch_size=64, quality=False)
    original_evaluate, original_step = VAERecipe.evaluate, VAERecipe.train_step
    calls = {"evaluate": 0, "steps": 0}

    def interrupting_evaluate(self, test_set, *args, **kwargs):
        calls["evaluate"] += 1
        if calls["evaluate"] == 2:  # epoch 2 of 2, after its last step
            os.kill(os.getpid(), signal.SIGINT)
        return original_evaluate(self, test_set, *args, **kwargs)

    def counting_step(self, x, y):
        calls["steps"] += 1
        return original_step(self, x, y)

    monkeypatch.setattr(VAERecipe, "evaluate", interrupting_evaluate)
    monkeypatch.setattr(VAERecipe, "train_step", counting_step)
    out = tmp_path / "cut"
    config = dict(data_dir=str(cifar_root), out=str(out), epochs=2, batch_size=64, quality=False, **QUICK)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(default_config("vae", **config), log=lines.append)
    assert lines[-1].startswith("interrupted after epoch 2;") and "cifargen train vae --resume" in lines[-1]
    assert not (out / "model.safetensors").exists() and not (out / "random.png").exists()  # no final outputs
    assert json.loads((out / "metrics.json").read_text())["finished"] is False
    steps = calls["steps"]
    resumed = train(default_config("vae", resume=True, **config))
    assert calls["steps"] == steps  # nothing left to train: only the final outputs ran
    assert resumed["finished"] and (out / "model.safetensors").is_file()
    assert _history_without_timings(resumed) == _history_without_timings(full)


def test_a_model_exported_from_a_stopped_run_follows_the_resumed_runs_best_epoch(cifar_root, tmp_path, monkeypatch):
    """eval/sample on a stopped run export best.pt; after a resume that improves, they export again."""
    import os
    import signal

    from cifargen.api import export_best_model
    from cifargen.modelfile import load
    from cifargen.recipes.vae import VAERecipe

    original = VAERecipe.train_step
    calls = {"n": 0, "stop_at": 6}  # epoch 2, step 2 (4 steps per epoch)

    def interrupting(self, x, y):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(VAERecipe, "train_step", interrupting)
    out = tmp_path / "run"
    config = dict(data_dir=str(cifar_root), out=str(out), epochs=3, batch_size=64, **QUICK)
    with pytest.raises(KeyboardInterrupt):
        train(default_config("vae", **config))
    assert load(export_best_model(out)).model_config["metrics"]["best_epoch"] == 1

    calls["n"], calls["stop_at"] = 0, 6  # resumed at epoch 2, step 3: stop at epoch 3, step 2
    with pytest.raises(KeyboardInterrupt):
        train(default_config("vae", resume=True, **config))
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 2, "precondition: the resumed epoch improved on the first"
    model = load(export_best_model(out))
    assert model.model_config["metrics"]["best_epoch"] == 2
    expected = VAERecipe(default_config("vae", **config), [str(i) for i in range(10)], torch.device("cpu"), None,
                         steps_per_epoch=1)
    expected.load_model_state(best["models"])
    for name, tensor in expected.export_model().state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_sigkill_then_resume_matches(cifar_root, tmp_path):
    """A real process killed with SIGKILL mid-run resumes to the uninterrupted run's figures."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--data-dir", str(cifar_root), "--epochs", "4", "--limit-train", "256", "--limit-test", "120",
            "--threads", "1", "--no-progress"]
    full = run("vae", cifar_root, tmp_path / "full", epochs=4, threads=1)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cifargen", "train", "vae", "--out", str(out), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {"finished": False}
    assert not done["finished"], "the run finished before it could be killed; make it longer"
    resumed = subprocess.run([sys.executable, "-m", "cifargen", "train", "vae", "--resume", str(out), *args],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["finished"] and saved["best"] == full["best"]
    assert _history_without_timings(saved) == _history_without_timings(full)


def test_a_last_batch_of_one_image_trains_the_acgan(cifar_root, tmp_path):
    from cifargen.recipes.acgan import mode_seeking_loss

    one = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert mode_seeking_loss(one, torch.randn(1, 8)).item() == 0.0
    metrics = run("acgan", cifar_root, tmp_path, epochs=1, limit_train=65, batch_size=64)  # batches of 64 and 1
    assert metrics["finished"] and np.isfinite(metrics["history"][0]["train"]["g_loss"])




def test_a_run_folder_belongs_to_one_process_and_a_stale_lock_is_taken_over(cifar_root, tmp_path):
    import socket
    import subprocess

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                    "started": "2026-01-01 00:00:00"}))
        with pytest.raises(ConfigError, match=f"in use by process {sleeper.pid} on {socket.gethostname()}"):
            run("vae", cifar_root, tmp_path, epochs=1)
        assert not (tmp_path / "metrics.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder is gone: its lock is stale, taken over, and released at the end.
    metrics = run("vae", cifar_root, tmp_path, epochs=1)
    assert metrics["finished"] and not (tmp_path / ".lock").exists()


def test_leftover_temporaries_are_cleaned_and_files_follow_the_umask(cifar_root, tmp_path):
    import os

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "model.safetensors.tmp").write_bytes(b"half a model")
    previous = os.umask(0o027)
    try:
        run("vae", cifar_root, tmp_path, epochs=1)
    finally:
        os.umask(previous)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    for name in ("last.pt", "best.pt", "metrics.json", "model.safetensors", "config.json", "E1.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_says_so(tmp_path, monkeypatch):
    import errno

    from cifargen.runtime import atomic_torch_save

    atomic_torch_save({"epoch": 1}, tmp_path / "last.pt")

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(TrainingError, match="cannot write .*last.pt \\(No space left on device\\); last.pt was left"):
        atomic_torch_save({"epoch": 2}, tmp_path / "last.pt")
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("model, setting", [("vae", {"width": 100_000}), ("cvae", {"latent_dim": 10 ** 9}),
                                            ("acgan", {"d_width": 100_000}), ("classifier", {"width": 100_000})])
def test_a_network_too_large_for_memory_is_refused_before_anything_is_allocated(model, setting, cifar_root, tmp_path):
    import dataclasses

    config = default_config(model, data_dir=str(tmp_path / "no-data"), out=str(tmp_path / "run"), **QUICK)
    config = dataclasses.replace(config, arch=dataclasses.replace(config.arch, **setting))
    with pytest.raises(ConfigError, match=r"parameters: training needs at least .* GiB") as caught:
        train(config)
    key, value = next(iter(setting.items()))
    assert f"arch.{key}={value}" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "no-data").exists()


def test_the_memory_limit_counts_every_trained_parameter(monkeypatch):
    from cifargen import training
    from cifargen.models import ACGAN

    config = default_config("acgan")
    # An independent count: the real networks, generator and discriminator, built on the CPU.
    parameters = sum(p.numel() for p in ACGAN(config.arch).parameters())
    device = torch.device("cpu")
    monkeypatch.setattr(training, "device_memory_bytes", lambda d: parameters * training.BYTES_PER_PARAMETER)
    assert training.check_model_fits(config, ACGAN, device) == parameters
    monkeypatch.setattr(training, "device_memory_bytes", lambda d: parameters * training.BYTES_PER_PARAMETER - 1)
    with pytest.raises(ConfigError, match=f"{parameters:,} parameters"):
        training.check_model_fits(config, ACGAN, device)


@pytest.mark.parametrize("failure", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes"),
])
def test_running_out_of_memory_while_training_says_what_to_reduce(failure, cifar_root, tmp_path, monkeypatch):
    from cifargen.recipes.vae import VAERecipe

    original, calls = VAERecipe.train_step, {"n": 0}

    def runs_out(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 2 (4 steps per epoch)
            raise failure
        return original(self, x, y)

    monkeypatch.setattr(VAERecipe, "train_step", runs_out)
    with pytest.raises(TrainingError, match=r"out of memory on cpu at epoch 2.*--batch-size \(now 64\).*"
                                            r"arch.width=32.*last good checkpoint .*\(epoch 1\)") as caught:
        run("vae", cifar_root, tmp_path, epochs=2, batch_size=64)
    assert "\n" not in str(caught.value)


def test_out_of_memory_building_the_networks_and_other_errors(cifar_root, tmp_path, monkeypatch):
    from cifargen.recipes.vae import VAERecipe

    def cannot_allocate(self, *args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(VAERecipe, "__init__", cannot_allocate)
    with pytest.raises(TrainingError, match="out of memory on cpu building the networks"):
        run("vae", cifar_root, tmp_path / "a", epochs=1)

    def a_bug(self, x, y):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.undo()
    monkeypatch.setattr(VAERecipe, "train_step", a_bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # not mistaken for a memory problem
        run("vae", cifar_root, tmp_path / "b", epochs=1)


def test_acgan_moving_averages_resume_bit_identically(cifar_root, tmp_path, monkeypatch):
    """Ctrl-C mid-epoch, then --resume: the moving averages (and everything else) end as in an uninterrupted run."""
    import os
    import signal

    from cifargen.models.acgan import ACGANConfig
    from cifargen.modelfile import load
    from cifargen.recipes.acgan import ACGANRecipe

    settings = dict(epochs=2, batch_size=32, limit_train=128, limit_test=40, ema_decay=0.9, quality=False,
                    arch=ACGANConfig(width=8, d_width=8, latent_dim=8, trunk="residual"))
    full = run("acgan", cifar_root, tmp_path / "full", **settings)
    assert set(full["best"]) == {"accuracy", "accuracy_raw"}
    original, calls = ACGANRecipe.train_step, {"n": 0}

    def interrupting(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 2 of 4
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(ACGANRecipe, "train_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run("acgan", cifar_root, tmp_path / "cut", **settings)
    resumed = run("acgan", cifar_root, tmp_path / "cut", resume=True, **settings)
    assert _history_without_timings(resumed) == _history_without_timings(full)
    a, b = load(tmp_path / "full"), load(tmp_path / "cut")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
