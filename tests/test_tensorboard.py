"""``--tensorboard``: the event files hold every epoch's figures and image grids once each, also
across an interrupted and resumed run, and a missing tensorboard package fails before any work."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from cifargen import default_config, train  # noqa: E402
from cifargen.cli import main  # noqa: E402
from cifargen.configs import read_config_file  # noqa: E402
from cifargen.data import load_dataset  # noqa: E402
from cifargen.registry import model_kind  # noqa: E402
from cifargen.training import Trainer  # noqa: E402

TINY = dict(limit_train=64, limit_test=20, batch_size=64, progress=False, threads=2, quality=False)


def tiny_config(model, cifar_root, out, **kw):
    small = dict(width=8, latent_dim=8, **({"d_width": 8} if model == "acgan" else {}))
    arch = model_kind(model).arch_class(**small)
    no_prior = {} if model == "acgan" else {"fit_prior": False}  # the prior plays no part in the log
    return default_config(model, data_dir=str(cifar_root), out=str(out), arch=arch, **{**TINY, **no_prior, **kw})


def read_log(folder):
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def expected_scalars(history):
    """metrics.json's history as tag -> [(step, value)], written independently of the log."""
    tags = {}
    for entry in history:
        for key, value in entry.items():
            if isinstance(value, dict):
                for name, v in value.items():
                    tags.setdefault(f"{key}/{name}", []).append((entry["epoch"], v))
            elif key != "epoch":
                tags.setdefault(f"epoch/{key}", []).append((entry["epoch"], value))
    return tags


def check_scalars(events, history):
    expected = expected_scalars(history)
    assert {"train/loss", "train/kl", "test/rec", "epoch/kl_weight", "epoch/lr", "epoch/seconds"} <= set(expected)
    for tag, points in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in logged] == [step for step, _ in points], tag  # each epoch once, in order
        assert [v for _, v in logged] == pytest.approx([v for _, v in points], rel=1e-6), tag


def decode(event):
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(event.encoded_image_string)))


def test_a_run_logs_every_epochs_figures_images_and_hyperparameters(cifar_root, tmp_path):
    metrics = train(tiny_config("vae", cifar_root, tmp_path / "run", epochs=2, tensorboard=""))
    log_dir = tmp_path / "run" / "tensorboard"
    assert metrics["config"]["tensorboard"] == str(log_dir)
    assert "tensorboard" not in read_config_file(tmp_path / "run" / "metrics.json")  # --config: not into another run's log
    events = read_log(log_dir)
    check_scalars(events, metrics["history"])
    images = events.Images("images/reconstructions")
    assert [e.step for e in images] == [1, 2]
    # One column (test image 0, the only fixed index below 20): original above its reconstruction.
    grid = decode(images[-1])
    assert grid.shape == (2 * 34 + 2, 34 + 2, 3)
    original = load_dataset(cifar_root, train=False).images[0].permute(1, 2, 0).numpy()
    assert np.array_equal(grid[2:34, 2:34], original)
    assert not np.array_equal(grid[36:68, 2:34], original)  # a reconstruction, not a copy
    best = events.Scalars("hparams/best_rec")
    assert [(e.step, e.value) for e in best] == [(2, pytest.approx(metrics["best"]["rec"], rel=1e-6))]
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
    start = hparams["_hparams_/session_start_info"]
    assert b"arch.latent_dim" in start and b"kl.shape" in start


def test_acgan_logs_its_fixed_samples_and_accuracies(cifar_root, tmp_path):
    metrics = train(tiny_config("acgan", cifar_root, tmp_path, epochs=1, tensorboard=str(tmp_path / "tb")))
    events = read_log(tmp_path / "tb")
    for tag in ("train/g_loss", "train/d_loss", "train/accuracy", "test/accuracy", "epoch/lr"):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == \
            [(1, pytest.approx(v, rel=1e-6)) for v in expected_scalars(metrics["history"])[tag][0][1:]]
    (image,) = events.Images("images/fixed_samples")
    assert decode(image).shape == (2 * 34 + 2, 10 * 34 + 2, 3)  # 20 samples, 10 to a row as in E1.png


def test_a_resumed_run_continues_the_log_with_each_epoch_once(cifar_root, tmp_path, monkeypatch, capsys):
    """Started without the flag and stopped after epoch 1; resumed with --tensorboard and killed
    between writing epoch 3's log and its checkpoint; resumed again to the end."""
    class Killed(Exception):
        pass

    def die_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise Killed

    with pytest.raises(Killed):
        train(tiny_config("cvae", cifar_root, tmp_path, epochs=3), log=die_after_first_epoch)
    original = Trainer.save_checkpoint

    def die_at_third_checkpoint(self, partial=None):
        if len(self.state.history) == 3:
            raise Killed
        original(self, partial)

    monkeypatch.setattr(Trainer, "save_checkpoint", die_at_third_checkpoint)
    with pytest.raises(Killed):  # the flag may be added on resume: it says where the run logs, not what it trains
        main(["train", "cvae", "--resume", str(tmp_path), "--tensorboard"])
    events = read_log(tmp_path / "tensorboard")
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]  # epoch 1 written from the history
    assert [e.step for e in events.Images("images/reconstructions")] == [2, 3]
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert "epochs [1] that" in capsys.readouterr().err
    assert main(["train", "cvae", "--resume", str(tmp_path)]) == 0  # the run's saved setting carries on
    assert "lacked" not in capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["tensorboard"] == str(tmp_path / "tensorboard")
    events = read_log(tmp_path / "tensorboard")
    check_scalars(events, metrics["history"])  # epoch 3 rewritten once, not doubled
    assert [e.step for e in events.Images("images/reconstructions")] == [2, 3]
    assert [e.step for e in events.Scalars("hparams/best_rec")] == [3]


def test_the_flag_maps_onto_the_config():
    from cifargen.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["train", "vae"])).tensorboard is None
    assert config_from_args(build_parser().parse_args(["train", "vae", "--tensorboard"])).tensorboard == ""
    assert config_from_args(build_parser().parse_args(["train", "vae", "--tensorboard", "tb"])).tensorboard == "tb"


def test_without_tensorboard_the_flag_fails_at_once_naming_the_install(cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    out = tmp_path / "run"
    assert main(["train", "vae", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "cifargen[tensorboard]"' in err
    assert not out.exists()  # nothing was created, loaded or trained


def test_only_rank_0_writes_the_log(cifar_root, tmp_path, monkeypatch):
    """Under torchrun every rank trains; a rank other than 0 leaves the log alone."""
    import cifargen.training

    monkeypatch.setattr(cifargen.training, "distributed_env", lambda: (1, 1, 0))  # rank 1 of a one-process group
    metrics = train(tiny_config("vae", cifar_root, tmp_path / "run", epochs=1, tensorboard=str(tmp_path / "tb")))
    assert metrics["epochs_completed"] == 1
    assert not (tmp_path / "tb").exists()
