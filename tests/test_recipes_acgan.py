"""The AC-GAN recipe: its step, schedules and mode-seeking term."""

import numpy as np
import pytest
import torch

from cifargen import default_config
from cifargen.errors import ConfigError
from cifargen.models import ACGAN
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


def test_class_norm_step_trains_the_per_class_affine_and_resumes_with_its_average():
    from cifargen.models.acgan import ClassBatchNorm

    torch.manual_seed(0)
    config = default_config("acgan", ema_decay=0.5, progress=False)
    config.arch.class_norm = True
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    norm = next(m for m in recipe.generator.modules() if isinstance(m, ClassBatchNorm))
    scale, mean = norm.scale.weight.detach().clone(), norm.norm.running_mean.clone()
    y = torch.randint(10, (8,))
    for _ in range(2):
        recipe.train_step(torch.rand(8, 3, 32, 32), y)
        recipe.after_step()
    assert not torch.equal(scale, norm.scale.weight) and not torch.equal(mean, norm.norm.running_mean)
    fresh = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    fresh.load_state_dict(recipe.state_dict())
    assert torch.equal(fresh.render_fixed(), recipe.render_fixed())  # the averaged generator, per-class affine included


def test_twin_head_is_averaged_checkpointed_and_exported():
    torch.manual_seed(0)
    config = default_config("acgan", ema_decay=0.5, twin_class_weight=0.5, progress=False)
    config.arch.twin_class_head = True
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    before = [p.detach().clone() for p in recipe.discriminator.twin_head.parameters()]
    for _ in range(2):
        recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
        recipe.after_step()
    assert all(not torch.equal(a, b) for a, b in zip(before, recipe.discriminator.twin_head.parameters()))
    fresh = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    fresh.load_state_dict(recipe.state_dict())
    exported = recipe.export_model()
    averaged = recipe.averages["discriminator"].module.twin_head.state_dict()
    for key, value in exported.discriminator.twin_head.state_dict().items():
        assert torch.equal(value, averaged[key]) and torch.equal(value, fresh.export_model().discriminator.twin_head.state_dict()[key])


def test_acgan_fixed_latents_stay_fixed():
    recipe = make_acgan_recipe(seed=3)
    z, classes = recipe.fixed_z.clone(), recipe.fixed_classes.clone()
    recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
    assert torch.equal(recipe.fixed_z, z) and torch.equal(recipe.fixed_classes, classes)
    again = make_acgan_recipe(seed=3)
    assert torch.equal(again.fixed_z, z) and torch.equal(again.fixed_classes, classes)
    assert recipe.fixed_z.shape == (20, 128)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
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


def test_hinge_losses_match_numpy():
    from cifargen.losses import hinge_discriminator_loss, hinge_generator_loss
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.5, -0.5])
    r, f = real.numpy(), fake.numpy()
    expected = np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean()  # (0 + .5 + 2)/3 + (0 + 1 + 2.5 + .5)/4
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(expected) == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_generator_loss(fake).item() == pytest.approx(-f.mean())


def test_hinge_step_uses_the_hinge_terms(monkeypatch):
    from cifargen.recipes import acgan
    calls = []
    monkeypatch.setattr(acgan, "hinge_discriminator_loss", lambda r, f: calls.append("d") or (r.sum() + f.sum()) * 0)
    monkeypatch.setattr(acgan, "hinge_generator_loss", lambda f: calls.append("g") or f.sum() * 0)
    config = default_config("acgan", adversarial="hinge", progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    out = recipe.train_step(torch.rand(6, 3, 32, 32), torch.randint(10, (6,)))
    assert calls == ["d", "g"] and all(torch.isfinite(v) for v in out.values())
    with pytest.raises(ConfigError, match="adversarial"):
        default_config("acgan", adversarial="wasserstein").validate()


def test_residual_block_matches_its_definition():
    from cifargen.models.acgan import ResidualBlock
    torch.manual_seed(0)
    block = ResidualBlock(8, lambda c: torch.nn.GroupNorm(2, c), lambda m: m).eval()
    x = torch.randn(2, 8, 5, 5)
    conv1, norm1, _, conv2, norm2 = block.body
    leaky = lambda t: torch.where(t > 0, t, 0.2 * t)
    by_hand = leaky(x + norm2(conv2(leaky(norm1(conv1(x))))))
    assert torch.allclose(block(x), by_hand, atol=1e-6)


def test_residual_discriminator_shapes_and_plain_layout_unchanged():
    from cifargen.models.acgan import ACGAN
    residual, plain = ACGAN(trunk="residual", d_width=8), ACGAN(d_width=8)
    adv, classes = residual.discriminator(torch.rand(3, 3, 32, 32))
    assert adv.shape == (3,) and classes.shape == (3, 10)
    blocks = [m for m in residual.discriminator.trunk if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == 3 and [b.body[0].in_channels for b in blocks] == [8, 16, 32]
    # The plain trunk keeps the parameter names saved models have.
    assert "trunk.2.weight" in plain.discriminator.state_dict() and "trunk.9.weight" in plain.discriminator.state_dict()
    with pytest.raises(ConfigError, match="trunk"):
        ACGAN(trunk="dense")


def test_moving_average_follows_its_recursion():
    """After each step, average = decay * average + (1 - decay) * weights, starting from the first weights."""
    torch.manual_seed(0)
    decay = 0.9
    config = default_config("acgan", ema_decay=decay, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    expected = None
    for _ in range(3):
        recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
        recipe.after_step()
        weights = {k: v.double().numpy().copy() for k, v in recipe.generator.state_dict().items()
                   if v.is_floating_point()}
        expected = weights if expected is None else {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    averaged = recipe.averages["generator"].module.state_dict()
    for key, value in expected.items():
        np.testing.assert_allclose(averaged[key].double().numpy(), value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert not torch.equal(averaged["to_logits.weight"], recipe.generator.state_dict()["to_logits.weight"])


def test_moving_average_is_evaluated_exported_and_checkpointed():
    torch.manual_seed(0)
    config = default_config("acgan", ema_decay=0.5, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    for _ in range(2):
        recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
        recipe.after_step()
    state = recipe.model_state()
    assert set(state) == {"generator", "discriminator", "generator_average", "discriminator_average"}
    exported = recipe.export_model()
    for name in ("generator", "discriminator"):
        for key, value in getattr(exported, name).state_dict().items():
            assert torch.equal(value, recipe.averages[name].module.state_dict()[key]), key
    fresh = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    fresh.load_state_dict(recipe.state_dict())
    for name, average in recipe.averages.items():
        other = fresh.averages[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in average.state_dict().items())
    with pytest.raises(ConfigError, match="ema_decay"):
        default_config("acgan", ema_decay=1.0).validate()


def test_pooled_class_head_reads_the_mean_feature():
    from cifargen.models.acgan import ACGAN
    torch.manual_seed(0)
    d = ACGAN(d_width=8, class_pool=True, class_hidden=0).discriminator.eval()
    x = torch.rand(2, 3, 32, 32)
    features = d.trunk(x)  # (2, 64, 4, 4)
    adv, classes = d(x)
    assert d.class_head.in_features == 64
    by_numpy = (features.detach().numpy().mean((2, 3)) @ d.class_head.weight.detach().numpy().T
                + d.class_head.bias.detach().numpy())
    np.testing.assert_allclose(classes.detach().numpy(), by_numpy, atol=1e-5)
    assert torch.allclose(adv, d.adv_head(features.flatten(1)).squeeze(1), atol=1e-6)


def test_two_layer_class_head_matches_numpy_and_leaves_the_linear_head_as_it_was():
    from cifargen.models.acgan import ACGAN
    torch.manual_seed(0)
    d = ACGAN(d_width=8, class_hidden=16).discriminator.eval()
    x = torch.rand(3, 3, 32, 32)
    flat = d.trunk(x).flatten(1).detach().numpy()  # (3, 64 * 4 * 4)
    first, second = d.class_head[0], d.class_head[2]
    hidden = flat @ first.weight.detach().numpy().T + first.bias.detach().numpy()
    hidden = np.where(hidden > 0, hidden, 0.2 * hidden)  # LeakyReLU(0.2)
    by_numpy = hidden @ second.weight.detach().numpy().T + second.bias.detach().numpy()
    np.testing.assert_allclose(d(x)[1].detach().numpy(), by_numpy, atol=1e-5)
    assert (first.in_features, first.out_features, second.out_features) == (64 * 16, 16, 10)
    # class_hidden=0 is one linear layer under the same name, so earlier model files load.
    linear = ACGAN(d_width=8, class_hidden=0).discriminator
    assert isinstance(linear.class_head, torch.nn.Linear) and "class_head.weight" in linear.state_dict()
    with pytest.raises(ConfigError, match="class_hidden"):
        ACGAN(class_hidden=-1)


def test_consistency_term_matches_numpy_and_sees_a_second_view():
    from cifargen.recipes.acgan import consistency_loss
    torch.manual_seed(0)
    adv_a, adv_b, cls_a, cls_b = torch.randn(5), torch.randn(5), torch.randn(5, 10), torch.randn(5, 10)
    expected = ((adv_a.numpy() - adv_b.numpy()) ** 2).mean() + ((cls_a.numpy() - cls_b.numpy()) ** 2).sum(1).mean()
    assert consistency_loss(adv_a, cls_a, adv_b, cls_b).item() == pytest.approx(expected, rel=1e-5)
    assert consistency_loss(adv_a, cls_a, adv_a, cls_a).item() == 0.0

    config = default_config("acgan", consistency=10.0, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    seen = []
    recipe.discriminator.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    out = recipe.train_step(torch.rand(6, 3, 32, 32), torch.randint(10, (6,)))
    assert seen == [18, 6] and all(torch.isfinite(v) for v in out.values())  # real, fake, real again; then G's step
    with pytest.raises(ConfigError, match="consistency"):
        default_config("acgan", consistency=-1.0).validate()


@pytest.mark.parametrize("fake_class_weight, d_class_batches", [(1.0, [4, 4]), (0.0, [4])])
def test_fake_class_weight_zero_teaches_the_classes_from_real_images_only(monkeypatch, fake_class_weight, d_class_batches):
    from cifargen.losses import auxiliary_loss
    from cifargen.recipes import acgan
    sizes = []
    monkeypatch.setattr(acgan, "auxiliary_loss", lambda logits, y, *args: sizes.append(len(y)) or auxiliary_loss(logits, y, *args))
    config = default_config("acgan", fake_class_weight=fake_class_weight, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    recipe.train_step(torch.rand(4, 3, 32, 32), torch.randint(10, (4,)))
    assert sizes == d_class_batches + [4]  # the discriminator's terms, then the generator's
    with pytest.raises(ConfigError, match="fake_class_weight"):
        default_config("acgan", fake_class_weight=-1.0).validate()


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_generator_class_weight_scales_the_generators_class_loss(monkeypatch, weight):
    """With each loss term replaced by a constant that keeps the graph, G's loss is by hand
    1 (real/fake) + weight * 2 (class), D's 1 + 1 (real/fake) + 10 * 2 (class on real images)."""
    from cifargen.recipes import acgan
    monkeypatch.setattr(acgan, "adversarial_loss", lambda logits, *args: logits.float().sum() * 0 + 1.0)
    monkeypatch.setattr(acgan, "auxiliary_loss", lambda logits, y, *args: logits.float().sum() * 0 + 2.0)
    config = default_config("acgan", generator_class_weight=weight, mode_seeking=0.0, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    out = recipe.train_step(torch.rand(4, 3, 32, 32), torch.randint(10, (4,)))
    assert out["g_loss"].item() == pytest.approx(1.0 + 2.0 * weight)
    assert out["d_loss"].item() == pytest.approx(22.0)
    with pytest.raises(ConfigError, match="generator_class_weight"):
        default_config("acgan", generator_class_weight=-0.5).validate()


@pytest.mark.parametrize("fake_class_weight", [0.0, 1.0])
def test_class_label_smoothing_reaches_the_discriminators_class_losses_only(monkeypatch, fake_class_weight):
    from cifargen.losses import auxiliary_loss
    from cifargen.recipes import acgan
    smoothings = []
    monkeypatch.setattr(acgan, "auxiliary_loss",
                        lambda logits, y, smoothing=0.0: smoothings.append(smoothing) or auxiliary_loss(logits, y, smoothing))
    config = default_config("acgan", class_label_smoothing=0.1, fake_class_weight=fake_class_weight, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    recipe.train_step(torch.rand(4, 3, 32, 32), torch.randint(10, (4,)))
    d_terms = [0.1, 0.1] if fake_class_weight else [0.1]
    assert smoothings == d_terms + [0.0]  # the discriminator's terms, then the generator's with hard labels
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="class_label_smoothing"):
            default_config("acgan", class_label_smoothing=bad).validate()


def test_average_update_matches_torchs_averaged_model():
    """update_average gives what AveragedModel.update_parameters gives, buffers (batch norm's) included."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from cifargen.recipes.acgan import update_average
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ours, torchs = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True) for _ in range(2))
    for _ in range(3):
        net(torch.randn(2, 3, 6, 6))  # moves the batch-norm statistics
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        update_average(ours, net)
        torchs.update_parameters(net)
    assert all(torch.equal(v, torchs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert int(ours.n_averaged) == 3 and ours.n_averaged.device.type == "cpu"


def test_discriminator_weight_decay_shrinks_its_weights_but_not_its_norms_and_biases():
    """With every gradient 0, Adam moves nothing and AdamW multiplies each decayed weight by
    1 - lr * decay (by hand); the generator's optimizer never decays."""
    config = default_config("acgan", d_weight_decay=0.5, lr=1e-2, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    before = {name: p.detach().clone() for name, p in recipe.discriminator.named_parameters()}
    for module in recipe.modules.values():
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
    g_before = [p.detach().clone() for p in recipe.generator.parameters()]
    for optimizer in recipe.optimizers.values():
        optimizer.step()
    for name, p in recipe.discriminator.named_parameters():
        factor = 1 - 1e-2 * 0.5 if p.ndim > 1 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)
    assert all(torch.equal(a, b) for a, b in zip(g_before, recipe.generator.parameters()))
    plain = ACGANRecipe(default_config("acgan", progress=False), tuple("abcdefghij"), torch.device("cpu"), None,
                        steps_per_epoch=10)
    assert type(plain.optimizers["discriminator"]) is torch.optim.Adam
    with pytest.raises(ConfigError, match="d_weight_decay"):
        default_config("acgan", d_weight_decay=-1e-4).validate()


def test_cutout_reaches_every_discriminator_input(monkeypatch):
    from cifargen import augment
    from cifargen.recipes import acgan
    sizes = []
    monkeypatch.setattr(acgan, "flip_and_translate",
                        lambda x, flip, shift, cutout: sizes.append((x.shape[0], cutout)) or augment.flip_and_translate(
                            x, flip, shift, cutout))
    config = default_config("acgan", cutout=16, progress=False)
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    out = recipe.train_step(torch.rand(4, 3, 32, 32), torch.randint(10, (4,)))
    assert sizes == [(8, 16), (4, 16)] and all(torch.isfinite(v) for v in out.values())  # D's step, then G's
    for bad in (-1, 33):
        with pytest.raises(ConfigError, match="cutout"):
            default_config("acgan", cutout=bad).validate()


def test_twin_class_head_trains_apart_from_the_trunk_and_passes_the_generators_gradient():
    """TAC-GAN's twin head: detached, its loss reaches the twin head and nothing else; attached (the
    generator's step), its gradient reaches the images."""
    torch.manual_seed(0)
    disc = ACGAN(d_width=8, width=8, twin_class_head=True).discriminator
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    adv, cls, twin = disc(x, twin="detached")
    assert adv.shape == (4,) and cls.shape == twin.shape == (4, 10)
    twin.sum().backward()
    assert all(p.grad is not None for p in disc.twin_head.parameters())
    assert all(p.grad is None for name, p in disc.named_parameters() if not name.startswith("twin_head"))
    assert x.grad is None
    _, _, twin = disc(x, twin="attached")
    twin.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the twin head has the class head's shape, and a discriminator without it keeps the earlier layout
    assert [p.shape for p in disc.twin_head.parameters()] == [p.shape for p in disc.class_head.parameters()]
    plain = ACGAN(d_width=8, width=8).discriminator
    assert plain.twin_head is None and not any(k.startswith("twin_head") for k in plain.state_dict())
    with pytest.raises(ConfigError, match="twin class head"):
        plain(x, twin="attached")


@pytest.mark.parametrize("twin_weight", [0.0, 0.5])
def test_twin_class_weight_subtracts_the_twin_heads_loss_from_the_generators(monkeypatch, twin_weight):
    """With the loss terms replaced by constants that keep the graph (real/fake 1; class losses in
    the order the step computes them: D's class head on real images 2, its twin head on generated
    ones 3, G's class head 2, G's twin head 3): G's loss is by hand 1 + 2 - twin_weight * 3, D's
    1 + 1 + 10 * 2 + 3."""
    from cifargen.recipes import acgan
    calls = []
    values = [2.0, 3.0, 2.0, 3.0]
    monkeypatch.setattr(acgan, "adversarial_loss", lambda logits, *args: logits.float().sum() * 0 + 1.0)
    monkeypatch.setattr(acgan, "auxiliary_loss", lambda logits, y, *args:
                        calls.append(len(y)) or logits.float().sum() * 0 + values[len(calls) - 1])
    config = default_config("acgan", twin_class_weight=twin_weight, mode_seeking=0.0, progress=False)
    config.arch.twin_class_head = True
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    out = recipe.train_step(torch.rand(4, 3, 32, 32), torch.randint(10, (4,)))
    assert calls == [4, 4, 4, 4] if twin_weight else calls == [4, 4, 4]  # without the weight, G skips the twin term
    assert out["g_loss"].item() == pytest.approx(1.0 + 2.0 - twin_weight * 3.0)
    assert out["d_loss"].item() == pytest.approx(22.0 + 3.0)
    with pytest.raises(ConfigError, match="twin_class_head=true"):
        default_config("acgan", twin_class_weight=0.5).validate()
    with pytest.raises(ConfigError, match="twin_class_weight"):
        default_config("acgan", twin_class_weight=-1.0).validate()


@pytest.mark.parametrize("consistency, parts", [(0.0, 2), (1.0, 3)])
def test_minibatch_std_step_keeps_real_and_generated_images_apart_and_saves(monkeypatch, tmp_path, consistency, parts):
    """The discriminator's pass over [real, generated(, real)] tells the minibatch standard deviation
    its parts; the generator's pass over generated images is one part. The head's extra weight
    trains and survives a model file."""
    from cifargen.modelfile import load, save_model
    from cifargen.models.acgan import MinibatchStd

    seen = []
    forward = MinibatchStd.forward
    monkeypatch.setattr(MinibatchStd, "forward", lambda self, f, segments=1: seen.append((f.shape[0], segments))
                        or forward(self, f, segments))
    torch.manual_seed(0)
    config = default_config("acgan", consistency=consistency, progress=False)
    config.arch.minibatch_std = 4
    recipe = ACGANRecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=10)
    weight = recipe.discriminator.adv_head.weight.detach().clone()
    out = recipe.train_step(torch.rand(8, 3, 32, 32), torch.randint(10, (8,)))
    assert seen == [(8 * parts, parts), (8, 1)] and all(torch.isfinite(v) for v in out.values())
    assert recipe.discriminator.adv_head.weight[0, -1] != weight[0, -1]  # the figure's own weight learns
    model = recipe.export_model()
    save_model(model, tmp_path / "model", tuple("abcdefghij"))
    loaded = load(tmp_path / "model")
    x = torch.rand(8, 3, 32, 32)
    assert loaded.config.minibatch_std == 4
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(loaded.discriminate(x), model.discriminate(x)))
