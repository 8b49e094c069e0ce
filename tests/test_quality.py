"""Sample-quality figures: Frechet distance, IS analogue, class consistency, the reference
classifier and the eval/train integration."""

import hashlib
import json

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from cifargen import default_config, load, train
from cifargen import quality as quality_module
from cifargen.cli import main
from cifargen.configs import with_settings
from cifargen.data import load_dataset
from cifargen.evaluation import classifier_accuracy
from cifargen.models import Classifier, ClassifierConfig
from cifargen.quality import (class_consistency, frechet_distance, inception_metrics, inception_score_analogue,
                              load_reference_classifier, sample_quality, within_class_spread)

QUICK = dict(limit_train=256, limit_test=120, progress=False, threads=2)


def reference_frechet(a, b):
    """FD with the matrix square root from symmetric eigendecompositions: Tr((S_a S_b)^(1/2)) =
    Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), which needs no general (non-symmetric) sqrtm."""
    def sym_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = sym_sqrt(cov_a)
    cross = np.trace(sym_sqrt(root_a @ cov_b @ root_a))
    return ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross


def test_frechet_distance_is_zero_on_itself_and_grows_with_noise():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(features, features + rng.normal(size=features.shape) * s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(distances, distances[1:]))
    other = rng.normal(loc=0.3, size=(1500, 16)) * 1.5
    assert frechet_distance(features, other) == pytest.approx(reference_frechet(features, other), rel=1e-6)


def test_inception_score_analogue_bounds_and_reference():
    uniform = np.full((100, 10), 0.1)
    assert inception_score_analogue(uniform) == pytest.approx(1.0)
    one_hot_balanced = np.eye(10)[np.arange(1000) % 10]
    assert inception_score_analogue(one_hot_balanced) == pytest.approx(10.0, rel=1e-6)
    probs = np.random.default_rng(1).dirichlet(np.ones(10) * 0.3, size=500)
    marginal = probs.mean(0)
    expected = np.exp(np.mean([entropy(p, marginal) for p in probs]))  # SciPy's KL
    assert inception_score_analogue(probs) == pytest.approx(expected, rel=1e-6)


def test_class_consistency():
    probs = np.eye(3)[[0, 1, 2, 2]]
    assert class_consistency(probs, [0, 1, 2, 0]) == 0.75


def test_within_class_spread_against_loops():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(60, 5)), np.arange(60) % 3
    expected = np.mean([np.mean([np.sqrt(((features[i] - features[j]) ** 2).sum())
                                 for i in np.flatnonzero(labels == c) for j in np.flatnonzero(labels == c) if i < j])
                        for c in range(3)])
    assert within_class_spread(features, labels) == pytest.approx(expected, rel=1e-12)
    collapsed = features[labels]  # every sample of a class has the same features
    assert within_class_spread(collapsed, labels) == 0.0
    assert within_class_spread(features * 2, labels) == pytest.approx(2 * expected)


@pytest.fixture(scope="module")
def reference_classifier(cifar_root, tmp_path_factory):
    """A reference classifier trained for one epoch on the tiny data set, via the shared loop."""
    out = tmp_path_factory.mktemp("classifier")
    train(default_config("classifier", data_dir=str(cifar_root), out=str(out), epochs=1, overwrite=True, **QUICK))
    return out


def test_classifier_trains_and_loads(reference_classifier, cifar_root):
    classifier = load_reference_classifier(reference_classifier)
    assert classifier.kind == "classifier"
    metrics = json.loads((reference_classifier / "metrics.json").read_text())
    test_set = load_dataset(cifar_root, train=False)
    assert classifier_accuracy(classifier, test_set, "cpu", torch.bfloat16) == pytest.approx(
        metrics["best"]["accuracy"], abs=1e-4)


def test_classifier_features_are_the_input_of_its_head():
    model = Classifier(ClassifierConfig(width=8)).eval()
    x = torch.rand(3, 3, 32, 32)
    features = model.features(x)
    assert features.shape == (3, model.config.feature_dim)
    assert torch.allclose(model.head(features), model(x))


def test_sample_quality_of_a_generator(reference_classifier, cifar_root, tmp_path):
    from cifargen.models import CVAE, VAEConfig

    classifier = load(reference_classifier)
    test_set = load_dataset(cifar_root, train=False)
    model = CVAE(VAEConfig(width=8, latent_dim=8)).eval()
    figures = sample_quality(model, classifier, test_set, "cpu", n=300)
    assert set(figures) == {"fd_cifargen", "is_cifargen", "class_consistency", "diversity", "quality_samples"}
    with_ratio = sample_quality(model, classifier, test_set, "cpu", n=300, train_set=load_dataset(cifar_root, train=True))
    assert {k: v for k, v in with_ratio.items() if k != "nn_ratio"} == figures and with_ratio["nn_ratio"] > 0
    assert figures["fd_cifargen"] > 0 and 1.0 <= figures["is_cifargen"] <= 10.0 and figures["diversity"] > 0
    assert sample_quality(model, classifier, test_set, "cpu", n=300) == figures  # seeded: repeatable


@pytest.mark.parametrize("model", ["cvae", "acgan"])
def test_training_writes_quality_and_eval_reproduces_it(model, reference_classifier, cifar_root, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("CIFARGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quality_module, "CHANCE_MULTIPLE", 0)  # the tiny classifier is near chance; see the next test
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "classifier").symlink_to(reference_classifier)
    out = tmp_path / "run"
    config = with_settings(default_config(model, data_dir=str(cifar_root), out=str(out), epochs=1, **QUICK),
                           {"arch.width": 8, "arch.latent_dim": 16, "quality_samples": 1000})
    quality = train(config)["quality"]
    assert json.loads((out / "metrics.json").read_text())["quality"] == quality
    digest = hashlib.sha256((reference_classifier / "model.safetensors").read_bytes()).hexdigest()
    assert quality["classifier"]["sha256"] == digest and quality["classifier"]["test_accuracy"] > 0
    # A VAE-family model reports each prior and the reconstruction ceiling; the AC-GAN one set.
    sections = [quality[name] for name in ("standard", "fitted", "reconstruction")] if model == "cvae" else [quality]
    capsys.readouterr()
    assert main(["eval", str(out), "--json", "--device", "cpu", "--quality-samples", "1000"]) == 0
    printed = json.loads(capsys.readouterr().out)["quality"]
    printed_sections = [printed[n] for n in ("standard", "fitted", "reconstruction")] if model == "cvae" else [printed]
    for saved, again in zip(sections, printed_sections):
        for key in ("fd_cifargen", "is_cifargen", "class_consistency", "diversity"):
            assert again[key] == pytest.approx(saved[key], rel=1e-4, abs=1e-4), key
    if model == "cvae":  # a different prior gives different samples
        assert quality["fitted"]["fd_cifargen"] != quality["standard"]["fd_cifargen"]
        assert 0 < quality["fitted"]["nn_ratio"] < 10


def test_the_minimum_accuracy_is_a_multiple_of_chance_and_a_weaker_classifier_is_named():
    from types import SimpleNamespace

    from cifargen.quality import minimum_accuracy, reference_classifier_problem

    assert minimum_accuracy(10) == pytest.approx(0.5) and minimum_accuracy(100) == pytest.approx(0.05)
    assert minimum_accuracy(2) == pytest.approx(0.75)  # 5x chance would be unreachable: halfway to 1 instead

    def classifier(accuracy):
        metrics = {} if accuracy is None else {"best": {"accuracy": accuracy}}
        return SimpleNamespace(config=SimpleNamespace(num_classes=10), model_config={"metrics": metrics})

    assert reference_classifier_problem(classifier(0.5)) is None
    assert "test accuracy 0.490, below the 0.50 (5x chance for 10 classes)" in reference_classifier_problem(classifier(0.49))
    assert "records no test accuracy" in reference_classifier_problem(classifier(None))


def test_a_classifier_near_chance_gives_no_figures_but_one_recorded_line(reference_classifier, cifar_root, tmp_path,
                                                                         monkeypatch, capsys):
    accuracy = json.loads((reference_classifier / "metrics.json").read_text())["best"]["accuracy"]
    assert accuracy < 0.5  # one epoch on random images: near chance (0.1)
    monkeypatch.setenv("CIFARGEN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "classifier").symlink_to(reference_classifier)
    out = tmp_path / "run"
    config = with_settings(default_config("cvae", data_dir=str(cifar_root), out=str(out), epochs=1, **QUICK),
                           {"arch.width": 8, "arch.latent_dim": 16, "quality_samples": 1000})
    lines = []
    train(config, log=lines.append)
    quality = json.loads((out / "metrics.json").read_text())["quality"]
    assert set(quality) == {"skipped", "classifier"} and f"test accuracy {accuracy:.3f}" in quality["skipped"]
    assert quality["classifier"]["test_accuracy"] == accuracy
    assert [line for line in lines if "sample-quality" in line] == [f"sample-quality figures skipped: {quality['skipped']}"]
    capsys.readouterr()
    assert main(["eval", str(out), "--json", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["quality"]["skipped"] == quality["skipped"]
    assert [line for line in captured.err.splitlines() if "sample-quality" in line] == [
        f"sample-quality figures skipped: {quality['skipped']}"]


def test_quality_is_skipped_with_one_line_without_a_classifier(cifar_root, tmp_path, capsys):
    out = tmp_path / "run"
    config = default_config("vae", data_dir=str(cifar_root), out=str(out), epochs=1, **QUICK)
    config.arch.width, config.arch.latent_dim = 8, 16
    lines = []
    metrics = train(config, log=lines.append)
    assert "quality" not in metrics
    assert any("cifargen classifier train" in line for line in lines)
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "rec" in captured.out and "sample-quality figures skipped" in captured.err


def test_inception_metrics_skip_without_library_or_weights(cifar_root, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fidelity(name, *args, **kwargs):
        if name == "torch_fidelity":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fidelity)
    lines = []
    from cifargen.models import VAE, VAEConfig

    model = VAE(VAEConfig(width=8, latent_dim=8))
    test_set = load_dataset(cifar_root, train=False)
    assert inception_metrics(model, test_set, "cpu", tmp_path / "absent.pth", n=10, log=lines.append) is None
    assert len(lines) == 1 and "skipped" in lines[0]


def test_classifier_command(cifar_root, tmp_path, capsys):
    out = tmp_path / "clf"
    assert main(["classifier", "train", "--data-dir", str(cifar_root), "--out", str(out), "--epochs", "1",
                 "--limit-train", "128", "--limit-test", "60", "--no-progress", "--threads", "2"]) == 0
    assert (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == "classifier"
    # Real images are the reference row: their class consistency is the classifier's accuracy.
    assert printed["real_class_consistency"] == pytest.approx(printed["accuracy"], abs=1e-12)
    assert printed["real_fd_cifargen"] > 0 and printed["real_quality_samples"] == 320
    assert 0.5 < printed["real_diversity"] < 2.0  # training vs test images: about as spread
    assert main(["sample", str(out), "--out", str(tmp_path / "s")]) == 2
    assert "does not generate" in capsys.readouterr().err
