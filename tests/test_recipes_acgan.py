"""The AC-GAN recipe: its step, schedules and mode-seeking term."""

import numpy as np
import pytest
import torch

from cifargen import default_config
from cifargen.errors import ConfigError
from cifargen.recipes.acgan import ACGANRecipe


def make_acgan_recipe(seed=0):
    config = default_config("acgan", seed=seed, progress=False)
    return ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)


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


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_acgan_learning_rates_fall_linearly_to_zero_over_the_last_half():
    config = default_config("acgan", epochs=2, lr=1e-3, d_lr=2e-3, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    rates = []
    for _ in range(20):
        rates.append((recipe.optimizers["generator"].param_groups[0]["lr"],
                      recipe.optimizers["discriminator"].param_groups[0]["lr"]))
        recipe.after_step()
    assert rates[:11] == [(1e-3, 2e-3)] * 11  # constant through step 10 = half of 2 x 10
    assert rates[15] == pytest.approx((0.5e-3, 1e-3))
    assert rates[19] == pytest.approx((0.1e-3, 0.2e-3))
    assert recipe.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_mode_seeking_loss_matches_numpy():
    from cifargen.recipes.acgan import mode_seeking_loss
    torch.manual_seed(0)
    images, z = torch.rand(7, 3, 4, 4), torch.randn(7, 5)  # odd: the middle sample is in no pair
    a, b = images.numpy()[:3], images.numpy()[4:]
    za, zb = z.numpy()[:3], z.numpy()[4:]
    expected = 1.0 / (np.abs(a - b).mean() / np.abs(za - zb).mean() + 1e-5)
    assert mode_seeking_loss(images, z).item() == pytest.approx(expected, rel=1e-5)
    collapsed = images.clone()
    collapsed[4:] = collapsed[:3]
    assert mode_seeking_loss(collapsed, z).item() > 1e4  # the same image for two latents costs most


def test_acgan_mode_seeking_step_pairs_classes_and_stays_finite(monkeypatch):
    import cifargen.recipes.acgan as acgan
    config = default_config("acgan", mode_seeking=1.0, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    seen = []
    generator_forward = recipe.generator.forward
    monkeypatch.setattr(recipe.generator, "forward", lambda z, y: seen.append(y.clone()) or generator_forward(z, y))
    terms = []
    monkeypatch.setattr(acgan, "mode_seeking_loss", lambda x, z: terms.append(1) or torch.tensor(0.5))
    out = recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
    assert torch.equal(seen[0][:4], seen[0][4:]) and terms == [1]
    assert all(torch.isfinite(v) for v in out.values())


def test_acgan_config_rejects_bad_schedule_values():
    with pytest.raises(ConfigError, match="lr_decay_from"):
        default_config("acgan", lr_decay_from=1.5).validate()
    with pytest.raises(ConfigError, match="mode_seeking"):
        default_config("acgan", mode_seeking=-1.0).validate()
