"""Fitted latent priors: the mixture fit, sampling, log-likelihood, saving and the fit-prior command."""

import json

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from cifargen import default_config, load, save_model, train
from cifargen.cli import main
from cifargen.errors import ConfigError
from cifargen.models import ACGAN, CVAE, VAE, VAEConfig
from cifargen.priors import GaussianMixturePrior, PriorConfig, nearest_neighbour_ratio

TINY = dict(epochs=1, limit_train=128, limit_test=60, progress=False, threads=2)


def synthetic_mixture(n=6000, seed=0):
    """Two well-separated 3-D Gaussians with weights 0.3 / 0.7 and known covariances."""
    rng = np.random.default_rng(seed)
    means = np.array([[4.0, 0.0, -2.0], [-3.0, 1.0, 2.0]])
    covs = np.array([[[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.5]], np.diag([0.3, 2.0, 1.0])])
    which = rng.random(n) < 0.3
    codes = np.where(which[:, None], rng.multivariate_normal(means[0], covs[0], n),
                     rng.multivariate_normal(means[1], covs[1], n))
    return codes, means, covs


def test_the_fit_recovers_a_known_mixture():
    codes, means, covs = synthetic_mixture()
    prior = GaussianMixturePrior.fit(codes, None, PriorConfig(n_components=2, reg_covar=1e-6))
    order = torch.argsort(prior.means[0, :, 0], descending=True)  # the component at x = 4 first
    np.testing.assert_allclose(prior.weights[0, order].numpy(), [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(prior.means[0, order].numpy(), means, atol=0.08)
    fitted_covs = (prior.scale_tril @ prior.scale_tril.transpose(-1, -2))[0, order].numpy()
    np.testing.assert_allclose(fitted_covs, covs, atol=0.12)


def test_samples_follow_the_fitted_mixture_and_are_seeded():
    codes, means, covs = synthetic_mixture()
    prior = GaussianMixturePrior.fit(codes, None, PriorConfig(n_components=2, reg_covar=1e-6))
    samples = prior.sample(40_000, generator=torch.Generator().manual_seed(0)).double().numpy()
    # The mixture's mean and covariance, from the fitted parameters by hand.
    w, mu = prior.weights[0].double().numpy(), prior.means[0].double().numpy()
    cov = (prior.scale_tril @ prior.scale_tril.transpose(-1, -2))[0].double().numpy()
    mean = (w[:, None] * mu).sum(0)
    total_cov = sum(w[k] * (cov[k] + np.outer(mu[k] - mean, mu[k] - mean)) for k in range(2))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(samples, rowvar=False), total_cov, atol=0.15)
    again = prior.sample(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, prior.sample(100, generator=torch.Generator().manual_seed(0)))


def test_temperature_scales_each_components_spread():
    codes, _, _ = synthetic_mixture()
    fitted = GaussianMixturePrior.fit(codes, None, PriorConfig(n_components=1, reg_covar=1e-6))
    cooled = GaussianMixturePrior(fitted.weights, fitted.means, fitted.scale_tril, PriorConfig(temperature=0.5),
                                  per_class=False)
    samples = cooled.sample(40_000, generator=torch.Generator().manual_seed(0)).double().numpy()
    cov = (fitted.scale_tril @ fitted.scale_tril.transpose(-1, -2))[0, 0].double().numpy()
    np.testing.assert_allclose(samples.mean(0), fitted.means[0, 0].double().numpy(), atol=0.03)
    np.testing.assert_allclose(np.cov(samples, rowvar=False), 0.25 * cov, atol=0.05)  # covariance times 0.5**2
    with pytest.raises(ConfigError, match="temperature"):
        PriorConfig(temperature=0.0)


def test_a_tied_mixture_shares_one_covariance_and_samples_it():
    rng = np.random.default_rng(2)
    shared = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]])
    means = np.array([[6.0, 0.0, 0.0], [-6.0, 0.0, 0.0]])
    codes = np.concatenate([rng.multivariate_normal(m, shared, 4000) for m in means])
    prior = GaussianMixturePrior.fit(codes, None, PriorConfig(n_components=2, covariance_type="tied", reg_covar=1e-6))
    assert prior.scale_tril.shape == (1, 1, 3, 3)  # stored once per mixture
    np.testing.assert_allclose((prior.scale_tril @ prior.scale_tril.transpose(-1, -2))[0, 0].numpy(), shared, atol=0.06)
    samples = prior.sample(20_000, generator=torch.Generator().manual_seed(0)).double().numpy()
    right = samples[:, 0] > 0  # each sample lies around the mean of the component it was drawn from
    assert 0.47 < right.mean() < 0.53
    for side, mean in ((right, means[0]), (~right, means[1])):
        np.testing.assert_allclose(samples[side].mean(0), mean, atol=0.05)
        np.testing.assert_allclose(np.cov(samples[side], rowvar=False), shared, atol=0.06)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag"])
def test_log_likelihood_matches_scikit_learn(covariance_type):
    codes, _, _ = synthetic_mixture(2000)
    config = PriorConfig(n_components=3, covariance_type=covariance_type, reg_covar=1e-4)
    prior = GaussianMixturePrior.fit(codes, None, config)
    reference = GaussianMixture(3, covariance_type=covariance_type, reg_covar=1e-4, random_state=0).fit(codes)
    np.testing.assert_allclose(prior.log_likelihood(torch.tensor(codes[:500])).numpy(),
                               reference.score_samples(codes[:500]), rtol=1e-5, atol=1e-4)


def test_a_per_class_prior_draws_near_its_own_class():
    rng = np.random.default_rng(1)
    centres = np.array([[6.0] * 4, [-6.0] * 4, [0.0, 8.0, 0.0, -8.0]])
    labels = np.arange(900) % 3
    codes = centres[labels] + rng.normal(size=(900, 4))
    prior = GaussianMixturePrior.fit(codes, labels, PriorConfig(n_components=2), num_classes=3)
    assert prior.per_class and prior.groups == 3
    y = torch.tensor([0, 1, 2] * 200)
    samples = prior.sample(600, y, generator=torch.Generator().manual_seed(0)).numpy()
    nearest_centre = ((samples[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    assert (nearest_centre == y.numpy()).all()
    with pytest.raises(ValueError, match="needs the classes"):
        prior.sample(3)


def test_too_few_codes_for_the_components_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"at least 5 training image\(s\) per class, but class 1 has 3; use fewer "
                                          r"components$"):
        GaussianMixturePrior.fit(np.random.default_rng(0).normal(size=(9, 2)), np.array([0] * 6 + [1] * 3), PriorConfig(n_components=5))
    # A class with no image at all, one component: fewer components cannot help, so the fix is the data.
    with pytest.raises(ConfigError, match="but class 2 has 0; use more training images$"):
        GaussianMixturePrior.fit(np.zeros((4, 2)), np.array([0, 0, 1, 1]), PriorConfig(n_components=1), num_classes=3)
    with pytest.raises(ConfigError, match=r"at least 2 training image\(s\), but the training data has 1"):
        GaussianMixturePrior.fit(np.zeros((1, 2)), None, PriorConfig(n_components=2))


def test_a_model_file_keeps_its_prior_and_samples_identically(tmp_path):
    model = CVAE(VAEConfig(latent_dim=4, width=8)).eval()
    codes, labels = np.random.default_rng(2).normal(size=(200, 4)), np.arange(200) % 10
    model.fitted_prior = GaussianMixturePrior.fit(codes, labels, PriorConfig(n_components=1), num_classes=10)
    save_model(model, tmp_path, [str(i) for i in range(10)])
    loaded = load(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["prior"]["per_class"] is True
    for prior in ("standard", "fitted"):
        first = model.generate(8, generator=torch.Generator().manual_seed(3), prior=prior)
        again = loaded.generate(8, generator=torch.Generator().manual_seed(3), prior=prior)
        assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(model.generate(8, generator=torch.Generator().manual_seed(3), prior="fitted").images,
                           model.generate(8, generator=torch.Generator().manual_seed(3)).images)


def test_the_fitted_prior_without_a_fit_and_unknown_priors_are_refused():
    with pytest.raises(ConfigError, match="no fitted prior: fit one with `cifargen fit-prior RUN`"):
        VAE(VAEConfig(latent_dim=4, width=8)).generate(2, prior="fitted")
    with pytest.raises(ConfigError, match="unknown prior 'gaussian'"):
        VAE(VAEConfig(latent_dim=4, width=8)).generate(2, prior="gaussian")
    with pytest.raises(ConfigError, match="only its standard prior"):
        ACGAN(latent_dim=4, width=8, d_width=8).generate(2, prior="fitted")


def test_nearest_neighbour_ratio_tells_copies_from_new_images():
    generator = torch.Generator().manual_seed(0)
    train_images = torch.rand(400, 3, 8, 8, generator=generator)
    test_images = torch.rand(100, 3, 8, 8, generator=generator)
    fresh = torch.rand(100, 3, 8, 8, generator=generator)
    copies = train_images[:100] + 0.001 * torch.rand(100, 3, 8, 8, generator=generator)
    assert nearest_neighbour_ratio(fresh, train_images, test_images) == pytest.approx(1.0, abs=0.1)
    assert nearest_neighbour_ratio(copies, train_images, test_images) < 0.01


def test_training_fits_the_prior_and_fit_prior_refits_it(cifar_root, tmp_path, capsys):
    run = tmp_path / "run"
    metrics = train(default_config("cvae", data_dir=str(cifar_root), out=str(run), **TINY))
    assert metrics["prior"]["images"] == 128 and "test_log_likelihood" in metrics["prior"]
    assert load(run).fitted_prior is not None and (run / "prior.safetensors").is_file()
    assert (run / "last" / "model.safetensors").is_file()  # the final epoch's model, loadable too
    assert load(run / "last").kind == "cvae"
    capsys.readouterr()
    assert main(["fit-prior", str(run), "--components", "2", "--covariance", "diag", "--no-quality"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 128
    saved = json.loads((run / "config.json").read_text())["prior"]
    assert saved["n_components"] == 2 and saved["covariance_type"] == "diag"
    assert json.loads((run / "metrics.json").read_text())["prior"] == report


def test_an_interrupted_run_can_be_fitted_evaluated_and_sampled(cifar_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(default_config("vae", data_dir=str(cifar_root), out=str(run), **TINY))
    for name in ("model.safetensors", "config.json", "prior.safetensors"):  # as if stopped before the end
        (run / name).unlink()
    assert main(["fit-prior", str(run), "--no-quality"]) == 0
    assert main(["eval", str(run), "--no-quality"]) == 0
    assert main(["sample", str(run), "--out", str(tmp_path / "s"), "--n", "4"]) == 0
    assert load(run).fitted_prior is not None


def test_fit_prior_needs_a_vae_run_with_a_checkpoint(cifar_root, tmp_path, capsys):
    assert main(["fit-prior", str(tmp_path)]) == 2
    assert "neither model.safetensors nor best.pt" in capsys.readouterr().err
    run = tmp_path / "gan"
    train(default_config("acgan", data_dir=str(cifar_root), out=str(run), **TINY))
    assert main(["fit-prior", str(run)]) == 2
    assert "only vae and cvae models have a latent prior" in capsys.readouterr().err
