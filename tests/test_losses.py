import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import correlate

from cifargen.errors import CifargenError
from cifargen.losses import (adversarial_loss, auxiliary_loss, gaussian_window, kl_divergence,
                             kl_per_sample, reconstruction_loss, reconstruction_terms, ssim)


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as pytorch-ssim defines it, written independently with SciPy (float64)."""
    coords = np.arange(11) - 5
    g = np.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    window = np.outer(g, g)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    maps = []
    for img_a, img_b in zip(a, b):
        for ch_a, ch_b in zip(img_a, img_b):
            f = lambda v: correlate(v, window, mode="constant", cval=0.0)  # zero padding of 5, same size
            mu_a, mu_b = f(ch_a), f(ch_b)
            var_a, var_b = f(ch_a * ch_a) - mu_a ** 2, f(ch_b * ch_b) - mu_b ** 2
            cov = f(ch_a * ch_b) - mu_a * mu_b
            maps.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(maps))


def structured_images(n=2, size=32):
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * xx)
    checker = ((np.floor(xx * 4) + np.floor(yy * 4)) % 2).astype(float)
    gradient = xx * yy
    img = np.stack([stripes, checker, gradient])
    return np.stack([img, img[::-1].copy()])[:n]


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_scipy_reference(kind):
    rng = np.random.default_rng(0)
    if kind == "random":
        a = rng.random((3, 3, 32, 32))
        b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    else:
        a = structured_images()
        b = np.clip(a * 0.7 + 0.1 + 0.05 * rng.standard_normal(a.shape), 0, 1)
    ours = ssim(torch.tensor(a), torch.tensor(b)).item()
    assert ours == pytest.approx(reference_ssim(a, b), abs=1e-10)
    ours32 = ssim(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)).item()
    assert ours32 == pytest.approx(reference_ssim(a, b), abs=1e-5)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(ssim(x, x, per_sample=True), torch.ones(4, dtype=torch.float64))


def test_gaussian_window_is_normalised():
    g = gaussian_window(11, 1.5, dtype=torch.float64)
    assert g.sum().item() == pytest.approx(1.0) and g.argmax().item() == 5


def test_reconstruction_terms_match_torch_losses():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 32, 32)
    logits = torch.randn(5, 3, 32, 32) * 3
    recon = torch.sigmoid(logits)
    terms = reconstruction_terms(x, logits)
    assert terms["bce"].mean().item() == pytest.approx(torch.nn.BCELoss()(recon, x).item(), rel=1e-5)
    assert terms["mse"].mean().item() == pytest.approx(torch.nn.MSELoss()(recon, x).item(), rel=1e-5)
    assert terms["ssim_loss"].mean().item() == pytest.approx(1 - ssim(recon, x).item(), rel=1e-5)
    total = terms["mse"] + terms["ssim_loss"] + terms["bce"]
    assert torch.allclose(terms["rec"], total)
    assert reconstruction_loss(x, recon).item() == pytest.approx(total.mean().item(), rel=1e-4)


@pytest.mark.parametrize("scale", [3.0, 20.0, 200.0])
def test_bce_value_is_bceloss_even_at_saturation(scale):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 8, 8)
    logits = torch.randn(3, 3, 8, 8) * scale
    ours = reconstruction_terms(x, logits)["bce"].mean()
    assert ours.item() == pytest.approx(torch.nn.BCELoss()(torch.sigmoid(logits), x).item(), rel=1e-6)
    recon = torch.sigmoid(logits)
    expected = (torch.nn.MSELoss()(recon, x) + 1 - ssim(recon, x) + torch.nn.BCELoss()(recon, x)).item()
    assert reconstruction_loss(x, recon).item() == pytest.approx(expected, rel=1e-6)


def test_kl_matches_formula():
    mu, log_var = torch.randn(6, 8), torch.randn(6, 8)
    expected = (0.5 * (mu ** 2 + log_var.exp() - log_var - 1)).sum(1).mean()
    assert kl_divergence(mu, log_var).item() == pytest.approx(expected.item(), rel=1e-6)
    assert kl_per_sample(torch.zeros(2, 4), torch.zeros(2, 4)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("saturation", [30.0, -30.0, 200.0, -200.0])
def test_gradients_finite_when_outputs_saturate(saturation):
    x = torch.cat([torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32), torch.rand(1, 3, 32, 32)])
    logits = torch.full_like(x, saturation, requires_grad=True)
    terms = reconstruction_terms(x, logits)
    loss = terms["rec"].mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # The probability form too, with outputs exactly at 0 and 1.
    recon = torch.where(torch.rand_like(x) < 0.5, 0.0, 1.0).requires_grad_(True)
    loss = reconstruction_loss(x, recon)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(recon.grad).all()
    mu = torch.full((2, 4), 1e3, requires_grad=True)
    log_var = torch.full((2, 4), -50.0, requires_grad=True)
    kl_divergence(mu, log_var).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(log_var.grad).all()


def test_gan_losses():
    logits = torch.tensor([10.0, -10.0])
    assert adversarial_loss(logits[:1], real=True).item() < 1e-4
    assert adversarial_loss(logits[1:], real=False).item() < 1e-4
    assert adversarial_loss(logits[:1], real=True, smoothing=0.1).item() > 0.5
    assert auxiliary_loss(torch.tensor([[5.0, 0.0]]), torch.tensor([0])).item() < 0.01


def test_auxiliary_loss_with_label_smoothing_matches_numpy():
    """-sum_k q_k log softmax_k with q = (1 - e) one-hot + e / K, computed in NumPy."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 4)) * 3, rng.integers(4, size=5)
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    for eps in (0.0, 0.1, 0.5):
        target = np.full((5, 4), eps / 4) + (1 - eps) * np.eye(4)[labels]
        expected = -(target * log_softmax).sum(1).mean()
        got = auxiliary_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), eps).item()
        assert got == pytest.approx(expected, rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
       scale=st.floats(0.0, 1e4), seed=st.integers(0, 2 ** 16))
def test_losses_on_random_shapes_and_values(n, c, h, w, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    logits = torch.randn(n, c, h, w, generator=g) * scale
    try:
        terms = reconstruction_terms(x, logits)
    except CifargenError:
        return
    for value in terms.values():
        assert value.shape == (n,) and torch.isfinite(value).all()
    assert (terms["bce"] >= 0).all() and (terms["mse"] >= 0).all()


def test_non_finite_logits_give_non_finite_terms_not_an_exception():
    """BCELoss raises on NaN probabilities; the training loop must get a NaN to report instead."""
    logits = torch.zeros(2, 3, 32, 32)
    logits[0, 0, 0, 0] = float("nan")
    terms = reconstruction_terms(torch.rand(2, 3, 32, 32), logits)
    assert torch.isnan(terms["rec"][0]) and torch.isfinite(terms["rec"][1])

