
import numpy as np
import pytest
import torch
import torch.nn as nn

from cifargen.models import ACGAN, ACGANConfig
from cifargen.models import VAE
from cifargen.models.layers import Dropout, Flatten, Unflatten, group_norm, random_int16_like


def test_random_int16_is_uniform_in_every_lane_and_keeps_the_layout():
    torch.manual_seed(0)
    x = torch.empty(64, 16, 32, 32).to(memory_format=torch.channels_last)
    values = random_int16_like(x)
    assert values.shape == x.shape and values.stride() == x.stride() and values.dtype == torch.int16
    flat = values.permute(0, 2, 3, 1).reshape(-1, 4).numpy().astype(np.int64)  # the 4 int16 of each 64-bit word
    for lane in flat.T:
        counts = np.bincount((lane + 32768) // 4096, minlength=16)  # 16 equal bins of the int16 range
        expected = len(lane) / 16
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 50, chi2  # 15 degrees of freedom: 50 is far beyond the 0.9999 quantile (~44)
    assert abs(flat.mean()) < 100  # mean of 1M uniform int16 values: standard error ~19


@pytest.mark.parametrize("p", [0.25, 0.5, 0.1])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dropout_matches_nn_dropout_in_distribution(p, layout):
    torch.manual_seed(1)
    x = (torch.rand(32, 16, 16, 16) + 0.5).to(memory_format=layout).requires_grad_()
    out = Dropout(p).train()(x)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.01  # 131k elements: standard error < 0.0014
    per_channel = dropped.float().mean(dim=(0, 2, 3))
    assert (per_channel - p).abs().max() < 0.03  # no channel (memory-order position) is favoured
    scale = 65536 / (65536 - round(p * 65536))  # 1 / (1 - p) for p on the 1/65536 grid
    torch.testing.assert_close(out[~dropped], (x * scale)[~dropped])
    out.sum().backward()
    torch.testing.assert_close(x.grad, (~dropped).float() * scale)
    assert out.is_contiguous(memory_format=layout)
    # Independent draws: two neighbours in memory (lanes of one 64-bit word among them) both
    # drop with probability p^2, and no two rows of the mask repeat.
    in_memory_order = dropped.permute(0, 2, 3, 1) if layout == torch.channels_last else dropped
    flat = in_memory_order.reshape(-1)
    assert abs((flat[:-1] & flat[1:]).float().mean().item() - p * p) < 0.01
    rows = in_memory_order.reshape(-1, 256)  # an all-kept row of 256 has probability 0.9^256 < 1e-11
    assert len({tuple(r.tolist()) for r in rows}) == len(rows)


def test_dropout_is_identity_in_eval_mode_and_at_zero():
    x = torch.rand(4, 8, 4, 4)
    assert torch.equal(Dropout(0.25).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="rounds to 1"):
        Dropout(1 - 2 ** -18)


def test_dropout_keeps_the_expectation_when_p_is_not_a_multiple_of_a_65536th():
    p = 0.1  # 6553.6 of 65536 levels: 6554 drop
    layer = Dropout(p)
    x = torch.ones(4, 8, 4, 4)
    out = layer(x)
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 65536 / (65536 - 6554)))


def test_dropout_under_autocast():
    x = torch.rand(4, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Dropout(0.25)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and 0 < (out == 0).float().mean() < 0.5


def test_dropout_follows_the_seed():
    x = torch.rand(4, 8, 4, 4)
    torch.manual_seed(3)
    first = Dropout(0.25)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.25)(x), first)


def test_dropout_on_bfloat16_keeps_dtype():
    x = torch.rand(8, 8, 8, 8, dtype=torch.bfloat16)
    out = Dropout(0.25)(x)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    torch.testing.assert_close(out[kept].float(), (x[kept] / 0.75).float(), rtol=1e-2, atol=0)


@pytest.mark.parametrize("channels, group_size, groups", [(32, 16, 2), (64, 16, 4), (256, 16, 16), (8, 16, 1),
                                                          (48, 16, 3), (24, 16, 2), (40, 16, 4), (32, 12, 4),
                                                          (32, None, 8), (256, None, 8)])
def test_group_norm_groups(channels, group_size, groups):
    norm = group_norm(channels, group_size)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == groups and norm.num_channels == channels


def test_group_norm_normalises_each_group_of_channels():
    x = torch.randn(2, 32, 5, 5) * torch.arange(1, 33).view(1, 32, 1, 1) + 3
    out = group_norm(32, 16)(x).detach().numpy()
    ref = x.numpy().reshape(2, 2, 16 * 25)
    ref = ((ref - ref.mean(-1, keepdims=True)) / np.sqrt(ref.var(-1, keepdims=True) + 1e-5)).reshape(2, 32, 5, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_discriminator_uses_the_configured_groups():
    disc = ACGAN(ACGANConfig(width=8, d_width=16, latent_dim=16)).discriminator
    norms = [m for m in disc.modules() if isinstance(m, nn.GroupNorm)]
    assert [m.num_groups for m in norms] == [m.num_channels // 16 for m in norms]
    assert sum(isinstance(m, Dropout) for m in disc.modules()) == 3


CHANNELS_LAST = torch.channels_last


@pytest.mark.parametrize("layout", [torch.contiguous_format, CHANNELS_LAST])
def test_flatten_matches_nn_flatten_and_returns_the_gradient_in_the_input_layout(layout):
    x = torch.randn(4, 6, 3, 5).contiguous(memory_format=layout).requires_grad_()
    grads = []
    h = x * 1  # not a leaf: a leaf's .grad takes the leaf's layout whatever autograd hands it
    h.register_hook(grads.append)
    weight = torch.randn(6 * 3 * 5)
    out = Flatten()(h)
    assert torch.equal(out, nn.Flatten()(x))  # (C, H, W) order, whatever the input layout
    (out * weight).sum().backward()
    assert torch.equal(grads[0], weight.view(1, 6, 3, 5).expand(4, 6, 3, 5))
    assert grads[0].is_contiguous(memory_format=layout)


def test_flatten_of_a_matrix_is_the_identity_shape():
    x = torch.randn(4, 7)
    assert torch.equal(Flatten()(x), x)


def test_unflatten_matches_nn_unflatten_in_channels_last_layout():
    x = torch.randn(4, 6 * 3 * 5, requires_grad=True)
    out = Unflatten((6, 3, 5))(x)
    assert torch.equal(out, nn.Unflatten(1, (6, 3, 5))(x))
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    weight = torch.randn(4, 6, 3, 5)
    (out * weight).sum().backward()
    assert torch.equal(x.grad, weight.flatten(1))


@pytest.mark.parametrize("model", [VAE(), ACGAN()])
def test_no_activation_beside_the_flatten_seams_sees_two_layouts(model):
    """The activations (ReLU, LeakyReLU, forward and backward) of a channels-last training step get
    their 4-D operands in one layout; two layouts at once send PyTorch to a strided kernel 10-30x
    slower (see layers.py). Fails with nn.Flatten and nn.Unflatten in place of cifargen's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def layout(t):
        if t.dim() != 4 or t.shape[1] == 1 or t.shape[2] * t.shape[3] == 1:
            return None
        return "channels_last" if not t.is_contiguous() and t.is_contiguous(memory_format=CHANNELS_LAST) else "other"

    mixed = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "relu" in str(func) or "threshold" in str(func):
                layouts = {layout(a) for a in args if isinstance(a, torch.Tensor)} - {None}
                if len(layouts) > 1:
                    mixed.append(str(func))
            return func(*args, **(kwargs or {}))

    model = model.to(memory_format=CHANNELS_LAST).train()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32).contiguous(memory_format=CHANNELS_LAST)
    y = torch.randint(0, 10, (4,))
    with Watch():
        if isinstance(model, VAE):
            out = model(x, y)
            loss = out.recon.sum() + out.mu.sum()
        else:
            images = model.generator(torch.randn(4, model.config.latent_dim), y)
            adv, cls = model.discriminator(torch.cat([x, images]))
            loss = adv.sum() + cls.sum()
        loss.backward()
    assert mixed == []


def test_the_discriminator_compiles_and_its_dropout_still_drops():
    """torch.compile once failed on the int16 view of the random words (setStorage out of bounds):
    under compilation Dropout hands over to F.dropout."""
    torch._dynamo.reset()
    discriminator = ACGAN(dropout=0.25).discriminator.to(memory_format=CHANNELS_LAST).train()
    compiled = torch.compile(discriminator, backend="aot_eager")
    x = torch.rand(16, 3, 32, 32).contiguous(memory_format=CHANNELS_LAST)
    with torch.autocast("cpu", torch.bfloat16):
        adv, cls = compiled(x)
    (adv.float().sum() + cls.float().sum()).backward()
    assert all(p.grad is not None for p in discriminator.parameters())
    dropout = torch.compile(Dropout(0.25), backend="aot_eager")
    dropped = (dropout(torch.ones(64, 32, 8, 8)) == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.01  # 131072 draws: 9 standard errors
    torch._dynamo.reset()
