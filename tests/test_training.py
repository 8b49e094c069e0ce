import json

import pytest
import torch

from cifargen import default_config, train
from cifargen.errors import ConfigError, TrainingError
from cifargen.recipes.acgan import ACGANRecipe

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


def test_acgan_end_to_end(cifar_root, tmp_path):
    run("acgan", cifar_root, tmp_path, epochs=1)
    for name in ("E1.png", "loss.png", "metrics.json", "best.pt"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= saved["best"]["accuracy"] <= 1.0
    assert set(saved["history"][0]["train"]) == {"g_loss", "d_loss", "accuracy"}
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert set(best["models"]) == {"generator", "discriminator"}


def make_acgan_recipe(seed=0):
    config = default_config("acgan", seed=seed, progress=False)
    return ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None)


def test_acgan_step_updates_both_networks():
    torch.manual_seed(0)
    recipe = make_acgan_recipe()
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in recipe.modules.items()}
    out = recipe.train_step(torch.rand(16, 3, 32, 32), torch.randint(10, (16,)))
    assert set(out) == {"g_loss", "d_loss", "accuracy"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    for name, module in recipe.modules.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
        assert changed, f"{name} did not change"
    assert all(p.requires_grad for p in recipe.discriminator.parameters())


def test_acgan_fixed_latents_stay_fixed():
    recipe = make_acgan_recipe(seed=3)
    z, classes = recipe.fixed_z.clone(), recipe.fixed_classes.clone()
    recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
    assert torch.equal(recipe.fixed_z, z) and torch.equal(recipe.fixed_classes, classes)
    again = make_acgan_recipe(seed=3)
    assert torch.equal(again.fixed_z, z) and torch.equal(again.fixed_classes, classes)
    assert recipe.fixed_z.shape == (20, 128)


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
    resumed = train(default_config("vae", data_dir=str(cifar_root), out=str(tmp_path / "resumed"), epochs=3,
                                   resume=True, **QUICK))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["best"] == full["best"]


def test_existing_run_is_not_overwritten(cifar_root, tmp_path):
    run("vae", cifar_root, tmp_path, epochs=1)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="--overwrite"):
        run("vae", cifar_root, tmp_path, epochs=1)
    assert (tmp_path / "metrics.json").read_text() == before


def test_non_finite_loss_stops_with_epoch_and_step(cifar_root, tmp_path, monkeypatch):
    from cifargen.recipes.vae import VAERecipe

    original = VAERecipe.train_step
    calls = {"n": 0}

    def poisoned(self, x, y):
        out = original(self, x, y)
        calls["n"] += 1
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(VAERecipe, "train_step", poisoned)
    with pytest.raises(TrainingError, match="epoch 1, step 2"):
        run("vae", cifar_root, tmp_path, epochs=1, batch_size=64)
