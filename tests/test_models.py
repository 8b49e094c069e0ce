import numpy as np
import pytest
import torch
import torch.nn as nn

from cifargen.models import ACGAN, CVAE, VAE, ACGANConfig, VAEConfig
from cifargen.models.vae import reparameterize

DOWNSAMPLERS = (nn.MaxPool2d, nn.AvgPool2d)
UPSAMPLERS = (nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)


def count_feature_convs(module):
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def count_downsamplers(module):
    return sum(isinstance(m, DOWNSAMPLERS) or (isinstance(m, nn.Conv2d) and max(m.stride) > 1) for m in module.modules())


def count_upsamplers(module):
    return sum(isinstance(m, UPSAMPLERS) or (isinstance(m, nn.ConvTranspose2d) and max(m.stride) > 1)
               for m in module.modules())


@pytest.mark.parametrize("convs_per_level", [1, 2])
@pytest.mark.parametrize("model_class", [VAE, CVAE])
def test_architecture_rules(model_class, convs_per_level):
    model = model_class(VAEConfig(width=8, latent_dim=16, convs_per_level=convs_per_level))
    assert model(torch.rand(2, 3, 32, 32), torch.tensor([0, 1])).recon.shape == (2, 3, 32, 32)
    assert count_feature_convs(model.encoder) >= 3
    assert count_downsamplers(model.encoder) >= 2
    assert count_upsamplers(model.decoder) >= 2
    assert isinstance(model.encoder.mu, nn.Linear) and isinstance(model.encoder.log_var, nn.Linear)
    assert isinstance(list(model.decoder.modules())[-1], nn.Sigmoid)
    # U-Net shape: the decoder mirrors the encoder's levels.
    assert count_upsamplers(model.decoder) == count_downsamplers(model.encoder)
    # No module is shared between the two paths.
    assert not {id(p) for p in model.encoder.parameters()} & {id(p) for p in model.decoder.parameters()}


@pytest.mark.parametrize("model_class", [VAE, CVAE])
def test_no_skip_connections(model_class):
    """The decoder sees only z (and y): its output equals decoding z alone, and the encoder's
    activations never enter it."""
    torch.manual_seed(0)
    model = model_class(VAEConfig(width=8, latent_dim=16)).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    decoder_inputs = []
    model.decoder.register_forward_pre_hook(lambda m, args: decoder_inputs.append(args))
    out = model(x, y)
    (z, *_), = decoder_inputs
    assert z is out.z  # the decoder's only tensor input is the latent code (and the class)
    assert torch.allclose(model.decoder(out.z, y if model.conditional else None), out.recon)
    # Another image's encoder activations change nothing: decoding out.z after encoding x2
    # (which would leave stale activations behind in any skip path) gives the same images.
    model(torch.rand(4, 3, 32, 32), y)
    assert torch.allclose(model.decode(out.z, y if model.conditional else None), out.recon)
    # And no decoder layer takes anything but the decoder's own activations.
    inputs_seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs_seen.extend(a for a in args if torch.is_tensor(a)))
             for m in model.decoder.modules() if m is not model.decoder]
    model.eval()
    encoder_outputs = []
    for m in model.encoder.modules():
        if not list(m.children()):
            m.register_forward_hook(lambda mod, inp, o: encoder_outputs.append(o))
    model(x, y)
    for h in hooks:
        h.remove()
    assert not any(t is e for t in inputs_seen for e in encoder_outputs)


def test_forward_returns_recon_mu_log_var_z():
    model = VAE(latent_dim=16, width=8)
    recon, mu, log_var, z = model(torch.rand(3, 3, 32, 32))
    assert recon.shape == (3, 3, 32, 32) and 0 <= recon.min() and recon.max() <= 1
    assert mu.shape == log_var.shape == z.shape == (3, 16)


def test_reparameterize():
    mu, log_var = torch.randn(5, 4), torch.randn(5, 4)
    torch.manual_seed(7)
    eps = torch.randn(5, 4)
    torch.manual_seed(7)
    assert torch.allclose(reparameterize(mu, log_var), mu + torch.exp(0.5 * log_var) * eps)


def test_cvae_conditions_decoder_on_class():
    torch.manual_seed(0)
    model = CVAE(latent_dim=16, width=8).eval()
    z = torch.randn(2, 16)
    a = model.decode(z, torch.tensor([0, 0]))
    b = model.decode(z, torch.tensor([5, 5]))
    assert not torch.allclose(a, b)
    assert sum(isinstance(m, nn.Embedding) for m in model.decoder.modules()) == 1


def test_generate():
    vae, cvae = VAE(latent_dim=16, width=8).eval(), CVAE(latent_dim=16, width=8).eval()
    images, labels = vae.generate(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, 32, 32) and images.min() >= 0 and images.max() <= 1 and labels is None
    again, _ = vae.generate(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    images, classes = cvae.generate(20, generator=torch.Generator().manual_seed(0))
    assert images.shape == (20, 3, 32, 32) and classes.shape == (20,) and len(set(classes.tolist())) > 1
    images, classes = cvae.generate(3, y=torch.tensor([4, 4, 4]))
    assert classes.tolist() == [4, 4, 4]


def test_generate_samples_standard_normal(monkeypatch):
    model = VAE(latent_dim=64, width=8).eval()
    seen = []
    monkeypatch.setattr(model, "decode", lambda z, y=None: seen.append(z) or torch.zeros(len(z), 3, 32, 32))
    model.generate(4000, generator=torch.Generator().manual_seed(1))
    z = seen[0]
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


def test_acgan_generator_is_the_decoder_with_leaky_relu():
    gan = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16))
    vae = VAE(VAEConfig(width=8, latent_dim=16))
    assert count_upsamplers(gan.generator) == count_upsamplers(vae.decoder) >= 2
    assert [type(m) for m in gan.generator.upsample.modules() if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))] == \
           [type(m) for m in vae.decoder.upsample.modules() if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
    assert any(isinstance(m, nn.LeakyReLU) for m in gan.generator.modules())
    assert not any(isinstance(m, nn.ReLU) for m in gan.generator.modules())
    assert isinstance(list(gan.generator.modules())[-1], nn.Sigmoid)
    assert any(isinstance(m, nn.Embedding) for m in gan.generator.modules())


def test_class_batch_norm_matches_numpy():
    """Batch statistics over (N, H, W), shared by the classes; then each image's class's scale and shift."""
    from cifargen.models.acgan import ClassBatchNorm

    torch.manual_seed(0)
    norm = ClassBatchNorm(3, num_classes=4).train()
    with torch.no_grad():
        norm.scale.weight.normal_()
        norm.shift.weight.normal_()
    x, y = torch.randn(6, 3, 5, 5) * 2 + 1, torch.tensor([0, 3, 3, 1, 2, 0])
    out = norm(x, y).detach().double().numpy()
    xs = x.double().numpy()
    mean, var = xs.mean((0, 2, 3), keepdims=True), xs.var((0, 2, 3), keepdims=True)  # biased, as in training
    scale, shift = norm.scale.weight.detach().double().numpy(), norm.shift.weight.detach().double().numpy()
    expected = (xs - mean) / np.sqrt(var + 1e-5) * scale[y.numpy(), :, None, None] + shift[y.numpy(), :, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # It starts as the batch norm it replaces, scale 1 and shift 0 for every class.
    fresh, plain = ClassBatchNorm(3, num_classes=4), nn.BatchNorm2d(3)
    assert torch.allclose(fresh(x, y), plain(x), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fresh(x.bfloat16(), y).dtype == torch.bfloat16  # the per-class affine keeps the activation's dtype


def test_class_norm_generator_conditions_every_up_block_and_runs_in_eval():
    from cifargen.models.acgan import ClassBatchNorm

    gan = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16, class_norm=True))
    norms = [m for m in gan.generator.modules() if isinstance(m, ClassBatchNorm)]
    assert len(norms) == count_upsamplers(gan.generator) >= 2
    assert not any(isinstance(m, nn.BatchNorm2d) and m.affine for m in gan.generator.modules())
    with torch.no_grad():  # a class whose shift is large renders differently from the same z with another class
        for norm in norms:
            norm.shift.weight[1] += 3.0
    gan.eval()
    z = torch.randn(1, 16)
    a = gan.decode(z, torch.tensor([0]))
    b = gan.decode(z, torch.tensor([1]))
    assert a.shape == (1, 3, 32, 32) and (a - b).abs().max() > 0.05
    images, classes = gan.generate(5, generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 32, 32) and torch.isfinite(images).all()
    # Without it, the generator is the layout earlier model files hold.
    plain = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16))
    assert not any(isinstance(m, ClassBatchNorm) for m in plain.modules())
    assert "upsample.0.1.weight" in plain.generator.state_dict()


def test_acgan_discriminator_heads():
    gan = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16))
    adv, cls = gan.discriminator(torch.rand(5, 3, 32, 32))
    assert adv.shape == (5,) and cls.shape == (5, 10)
    images, classes = gan.generate(4)
    assert images.shape == (4, 3, 32, 32) and classes.shape == (4,)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_acgan_discriminator_norm_options(norm):
    disc = ACGAN(ACGANConfig(width=8, d_width=4, latent_dim=16, norm=norm)).discriminator
    kinds = {"batch": nn.BatchNorm2d, "group": nn.GroupNorm}
    if norm in kinds:
        assert sum(isinstance(m, kinds[norm]) for m in disc.modules()) == 6  # every conv but the first
    adv, cls = disc(torch.rand(3, 3, 32, 32))
    assert adv.shape == (3,) and cls.shape == (3, 10)


def test_generator_step_leaves_batch_norm_running_statistics_alone():
    from cifargen.recipes.acgan import frozen_running_stats

    disc = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16, norm="batch")).discriminator.train()
    before = [m.running_mean.clone() for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    with frozen_running_stats(disc):
        disc(torch.rand(4, 3, 32, 32) + 5)
    after = [m.running_mean for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    disc(torch.rand(4, 3, 32, 32) + 5)  # outside it, the statistics move again
    assert not torch.equal(before[0], next(m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)).running_mean)


def test_log_variance_bound_cuts_the_forward_pass_only():
    from cifargen.models.vae import LOG_VAR_MAX, bound_log_var

    raw = torch.tensor([-6.0, 0.0, 1.9999, LOG_VAR_MAX, 50.0, 1e4], requires_grad=True)
    bounded = bound_log_var(raw)
    expected = torch.tensor([-6.0, 0.0, 1.9999, LOG_VAR_MAX, LOG_VAR_MAX, LOG_VAR_MAX])
    assert torch.equal(bounded.detach(), expected)  # bit for bit below the bound
    bounded.sum().backward()
    assert torch.equal(raw.grad, torch.ones(6))  # the gradient of the identity, so cut values can come back


def test_minibatch_std_matches_numpy_per_group():
    """Each image's figure is the mean over features of the population standard deviation of its
    group of consecutive images (NumPy's std, ddof=0), and groups stay inside their part."""
    from cifargen.models.acgan import MinibatchStd

    features = torch.randn(24, 5, 2, 2, dtype=torch.float64)
    layer = MinibatchStd(4)
    x = features.numpy().reshape(24, -1)
    # one part of 24: groups of 4
    expected = np.repeat([np.sqrt(x[i:i + 4].var(axis=0) + 1e-8).mean() for i in range(0, 24, 4)], 4)
    np.testing.assert_allclose(layer(features).squeeze(1).numpy(), expected, rtol=1e-6)
    # three parts of 8, as a discriminator pass over real, generated and real images: groups of 4,
    # computed part by part, so changing one part leaves the others' figures alone
    parts = layer(features, segments=3)
    changed = features.clone()
    changed[8:16] *= 3
    after = layer(changed, segments=3)
    assert torch.equal(parts[:8], after[:8]) and torch.equal(parts[16:], after[16:])
    assert not torch.equal(parts[8:16], after[8:16])
    # parts of 6 take groups of 3 (the largest size up to 4 that divides 6), never crossing a part
    assert layer.groups_for(6) == 3 and layer.groups_for(8) == 4 and layer.groups_for(5) == 1
    expected = np.repeat([np.sqrt(x[i:i + 3].var(axis=0) + 1e-8).mean() for i in range(0, 12, 3)], 3)
    np.testing.assert_allclose(layer(features[:12], segments=2).squeeze(1).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="equal parts"):
        layer(features[:10], segments=3)


def test_minibatch_std_reaches_the_real_fake_head_only():
    """With the option, an image's real/fake logit depends on its group, its class logits do not;
    without it, the discriminator keeps its earlier layout."""
    torch.manual_seed(0)
    disc = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16, minibatch_std=4)).discriminator.eval()
    plain = ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=16)).discriminator
    assert disc.adv_head.in_features == plain.adv_head.in_features + 1 and plain.minibatch_std is None
    x = torch.rand(8, 3, 32, 32)
    adv, cls = disc(x)
    other = x.clone()
    other[1:4] = torch.rand(3, 3, 32, 32)  # image 0's group mates
    adv_other, cls_other = disc(other)
    assert torch.allclose(cls_other[0], cls[0], atol=1e-6) and not torch.allclose(adv_other[0], adv[0])
    assert torch.equal(adv_other[4:], adv[4:])  # the second group is untouched
    # the figure is what the extra weight of the head reads: a group of four copies has figure ~0
    copies = x[:1].expand(4, -1, -1, -1)
    flat = disc.flatten(disc.trunk(copies))
    expected = disc.adv_head(torch.cat([flat, torch.full((4, 1), 1e-4)], 1)).squeeze(1)
    assert torch.allclose(disc(copies)[0], expected, atol=1e-5)
    for bad in (1, -2):
        with pytest.raises(Exception, match="minibatch_std"):
            ACGANConfig(minibatch_std=bad)
