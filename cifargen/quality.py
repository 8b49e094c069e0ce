"""Sample quality without internet, measured with cifargen's own reference classifier.

For a generator (VAE, CVAE, AC-GAN) and 10,000 of its samples:

* ``class_consistency`` (conditional models): the share of samples the classifier assigns to the
  class they were generated for;
* ``fd_cifargen``: the Frechet distance between Gaussians fitted to the classifier's penultimate
  features of the samples and of the test images. It is FID's formula on a different network,
  so its values are not comparable with published FIDs, and it is never called FID;
* ``is_cifargen``: the Inception-Score analogue, exp(E_x KL(p(y|x) || p(y))), between 1 and the
  number of classes;
* ``diversity`` (conditional models): how far apart samples of one class lie in the classifier's
  feature space (mean pairwise distance), as a fraction of the same spread for the test images of
  that class: about 1 for a generator as varied as the data, near 0 when it has collapsed within
  classes (the same image for every z).

The standard Inception FID/IS/KID come from ``torch-fidelity`` only when it is installed and its
Inception weights are on this machine (:func:`inception_metrics`); otherwise they are skipped.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from scipy.spatial.distance import pdist

from .data import CIFAR10_CLASSES, BatchLoader, ImageDataset, to_float
from .modelfile import WEIGHTS, load
from .priors import distance_ratio, nearest_distances
from .recipes.classifier import classifier_dir_for, default_classifier_dir
from .runtime import autocast

QUALITY_SAMPLES = 10_000
# A reference classifier near chance measures nothing: its test accuracy must reach CHANCE_MULTIPLE
# times chance (0.5 for ten classes; halfway from chance to 1 where that is lower, as for 2-5 classes).
CHANCE_MULTIPLE = 5
NN_SAMPLES = 1000  # samples (and test images) whose nearest training image is looked up
TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def reference_classifier_path(path: str | os.PathLike | None = None) -> Path:
    """The reference classifier's folder: ``path``, or CIFAR-10's (32x32) cache folder."""
    return Path(path) if path else default_classifier_dir()


def trained_on(model) -> dict | None:
    """The identity (name, classes, image size) of the data set a loaded model was trained on.

    Models saved before identities were recorded: CIFAR-10 when their classes are CIFAR-10's."""
    metrics = model.model_config.get("metrics", {})
    if isinstance(metrics.get("data"), dict):
        return metrics["data"]
    names = list(getattr(model, "class_names", ()) or ())
    size = getattr(getattr(model, "config", None), "image_size", 32)
    return {"name": "cifar10", "class_names": names, "image_size": size} if names == list(CIFAR10_CLASSES) else None


def describe_identity(identity: dict | None) -> str:
    if identity is None:
        return "an unrecorded data set"
    return f"{identity['name']} ({len(identity['class_names'])} classes, {identity['image_size']}x{identity['image_size']})"


def find_reference_classifier(data: ImageDataset, path: str | os.PathLike | None = None,
                              device="cpu") -> tuple[object | None, str | None]:
    """The reference classifier of ``data``'s data set, or (None, a one-line reason).

    Sample-quality figures are only ever measured with a classifier of the same data set (name,
    classes, image size); ``path`` names one explicitly, and is refused if it belongs to another.
    """
    identity = data.identity()
    folders = [Path(path)] if path else [classifier_dir_for(identity), default_classifier_dir().parent]
    train_hint = "train one with: cifargen classifier train --data-dir DIR (the data the models were trained on)"
    for folder in folders:
        if not (folder / WEIGHTS).is_file():
            continue
        classifier = load(folder, device)
        if trained_on(classifier) == identity:
            return classifier, None
        if path:
            return None, (f"the classifier in {folder} was trained on {describe_identity(trained_on(classifier))}, "
                          f"not on {describe_identity(identity)}; {train_hint}")
    return None, f"no reference classifier for {describe_identity(identity)} in {classifier_dir_for(identity)} ({train_hint})"


def load_reference_classifier(path: str | os.PathLike | None = None, device="cpu"):
    """The classifier in ``path`` (default: CIFAR-10's cache folder), or None when there is none.
    To find the one that belongs to a data set, use :func:`find_reference_classifier`."""
    folder = reference_classifier_path(path)
    if not (folder / WEIGHTS).is_file():
        return None
    return load(folder, device)


def minimum_accuracy(num_classes: int) -> float:
    """The test accuracy a reference classifier of ``num_classes`` classes needs before its figures
    are reported: ``CHANCE_MULTIPLE`` times chance, or halfway from chance to 1 if that is lower."""
    chance = 1 / num_classes
    return min(CHANCE_MULTIPLE * chance, (1 + chance) / 2)


def reference_classifier_problem(classifier, identity: dict | None = None) -> str | None:
    """Why ``classifier`` cannot measure sample quality (no recorded test accuracy, or one below
    :func:`minimum_accuracy`), or None when it can."""
    identity = identity or classifier_identity(classifier)
    accuracy, needed = identity.get("test_accuracy"), minimum_accuracy(classifier.config.num_classes)
    where = Path(classifier.weights_path).parent if getattr(classifier, "weights_path", None) else "the cache"
    fix = "train a better one with: cifargen classifier train --overwrite"
    if not isinstance(accuracy, (int, float)):
        return f"the reference classifier in {where} records no test accuracy; {fix}"
    if accuracy < needed:
        return (f"the reference classifier in {where} has test accuracy {accuracy:.3f}, below the {needed:.2f} "
                f"({CHANCE_MULTIPLE}x chance for {classifier.config.num_classes} classes) its figures need to mean "
                f"anything; {fix}")
    return None


@torch.inference_mode()
def classifier_outputs(classifier, batches, autocast_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and penultimate features (float64 NumPy arrays) of image batches."""
    probs, features = [], []
    for x in batches:
        with autocast(x.device, autocast_dtype):
            h = classifier.features(x.contiguous(memory_format=torch.channels_last))
            logits = classifier.head(h)
        probs.append(torch.softmax(logits.float(), 1).double().cpu())
        features.append(h.float().double().cpu())
    return torch.cat(probs).numpy(), torch.cat(features).numpy()


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    with warnings.catch_warnings():  # a singular product is handled below, not worth a warning
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # nudge both covariances, as the FID reference code does
            offset = np.eye(cov_a.shape[0]) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def inception_score_analogue(probs: np.ndarray) -> float:
    """exp(mean over samples of KL(p(y|x) || p(y))), with p(y) the mean of p(y|x) over the samples."""
    eps = 1e-12
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + eps) - np.log(marginal + eps))).sum(1)
    return float(np.exp(kl.mean()))


def class_consistency(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of images the classifier assigns to ``labels``."""
    return float((probs.argmax(1) == np.asarray(labels)).mean())


def within_class_spread(features: np.ndarray, labels: np.ndarray, per_class: int = 200) -> float:
    """Mean over classes of the mean Euclidean distance between two feature vectors of that class
    (the first ``per_class`` of each class)."""
    labels = np.asarray(labels)
    spreads = [pdist(features[labels == c][:per_class]).mean() for c in np.unique(labels)
               if (labels == c).sum() >= 2]
    return float(np.mean(spreads))


def generated_batches(model, n: int, seed: int, device, batch_size: int = 500, prior: str = "standard"):
    """Yield ``(images, classes or None)`` for ``n`` samples of a generator from ``prior``, ``batch_size`` at a time.

    Conditional models get balanced classes (``i % classes`` for sample i), so every class
    counts equally in the class consistency.
    """
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        y = (torch.arange(start, start + count) % model.config.num_classes).to(device) if model.conditional else None
        images, labels = model.generate(count, y, generator=generator, prior=prior)
        yield images.float(), labels


def _real_images(dataset: ImageDataset, device):
    """The images of ``dataset``, in evaluation batches on ``device``."""
    return (x for x, _ in BatchLoader(dataset, 1000, device, shuffle=False))


def _labelled_figures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"class_consistency": class_consistency(probs, labels), "is_cifargen": inception_score_analogue(probs)}


@dataclass
class Reference:
    """What every set of figures is measured against, computed once per report: the classifier's
    features of the test images and, with a training split, the test images' distances to their
    nearest training image (the denominator of ``nn_ratio``)."""

    test_set: ImageDataset
    test_features: np.ndarray
    train_images: torch.Tensor | None = None    # (N, C*H*W) float, for nearest-neighbour distances
    test_nearest: torch.Tensor | None = None

    @classmethod
    @torch.inference_mode()
    def measure(cls, classifier, test_set: ImageDataset, device, autocast_dtype=None,
                train_set: ImageDataset | None = None) -> "Reference":
        _, features = classifier_outputs(classifier, _real_images(test_set, device), autocast_dtype)
        if train_set is None:
            return cls(test_set, features)
        train_images = to_float(train_set.images).flatten(1)
        return cls(test_set, features, train_images,
                   nearest_distances(to_float(test_set.images[:NN_SAMPLES]), train_images))


@torch.inference_mode()
def sample_quality(model, classifier, test_set: ImageDataset, device, autocast_dtype=None,
                   n: int = QUALITY_SAMPLES, seed: int = 0, prior: str = "standard",
                   train_set: ImageDataset | None = None, reference: Reference | None = None) -> dict[str, float]:
    """``fd_cifargen``, ``is_cifargen`` and (conditional models) ``class_consistency`` and ``diversity``
    of ``n`` samples from ``prior``; with ``train_set``, also ``nn_ratio`` (see
    :func:`~cifargen.priors.nearest_neighbour_ratio`: well below 1 means copies of training images).
    ``reference`` (from :meth:`Reference.measure`) saves measuring the test images again."""
    reference = reference or Reference.measure(classifier, test_set, device, autocast_dtype, train_set)
    kept = []

    def images():
        for x, y in generated_batches(model, n, seed, device, prior=prior):
            if sum(len(k) for k in kept) < NN_SAMPLES:
                kept.append(x.cpu())
            yield x, y

    figures = _figures_of(classifier, images(), reference, autocast_dtype)
    if reference.train_images is not None:
        nearest = nearest_distances(torch.cat(kept)[:NN_SAMPLES], reference.train_images)
        figures["nn_ratio"] = distance_ratio(nearest, reference.test_nearest)
    figures["quality_samples"] = n
    return figures


@torch.inference_mode()
def reconstruction_quality(model, classifier, test_set: ImageDataset, device, autocast_dtype=None,
                           reference: Reference | None = None) -> dict[str, float]:
    """The same figures for a VAE's reconstructions of the test images (decoded posterior means):
    the ceiling of any prior, since a prior can at best hand the decoder codes like these."""
    reference = reference or Reference.measure(classifier, test_set, device, autocast_dtype)

    def images():
        for x, y in BatchLoader(test_set, 500, device, shuffle=False):
            with autocast(x.device, autocast_dtype):
                mu, _ = model.encoder(x, y if model.conditional else None)
                recon = model.decode(mu, y)
            yield recon.float(), (y if model.conditional else None)

    figures = _figures_of(classifier, images(), reference, autocast_dtype)
    figures["quality_samples"] = len(test_set)
    return figures


def _figures_of(classifier, batches, reference: Reference, autocast_dtype) -> dict[str, float]:
    """Sample-quality figures of ``(images, classes or None)`` batches against the test images."""
    labels = []

    def images():
        for x, y in batches:
            if y is not None:
                labels.append(y.cpu())
            yield x

    probs, features = classifier_outputs(classifier, images(), autocast_dtype)
    figures = {"fd_cifargen": frechet_distance(features, reference.test_features),
               "is_cifargen": inception_score_analogue(probs)}
    if labels:
        labels = torch.cat(labels).numpy()
        figures["class_consistency"] = class_consistency(probs, labels)
        figures["diversity"] = (within_class_spread(features, labels)
                                / within_class_spread(reference.test_features, reference.test_set.labels.numpy()))
    return figures


def quality_report(model, classifier, test_set: ImageDataset, device, autocast_dtype=None, n: int = QUALITY_SAMPLES,
                   train_set: ImageDataset | None = None) -> dict:
    """Every sample-quality figure of a generator, with the classifier that measured them.

    A model with a latent prior to choose (VAE, CVAE) gets one set per prior, ``standard`` and
    (once fitted) ``fitted``, and ``reconstruction``, the ceiling; others get one set. A classifier
    too weak to mean anything gives ``{"skipped": reason, "classifier": ...}`` and no figures.
    """
    identity = classifier_identity(classifier)
    problem = reference_classifier_problem(classifier, identity)
    if problem is not None:
        return {"skipped": problem, "classifier": identity}
    reference = Reference.measure(classifier, test_set, device, autocast_dtype, train_set)
    if hasattr(model, "fitted_prior"):
        priors = ["standard"] + (["fitted"] if model.fitted_prior is not None else [])
        report = {prior: sample_quality(model, classifier, test_set, device, autocast_dtype, n, prior=prior,
                                        reference=reference) for prior in priors}
        report["reconstruction"] = reconstruction_quality(model, classifier, test_set, device, autocast_dtype,
                                                          reference)
    else:
        report = sample_quality(model, classifier, test_set, device, autocast_dtype, n, reference=reference)
    report["classifier"] = identity
    return report


def classifier_identity(classifier) -> dict:
    """Which reference classifier measured a figure: its weights' SHA-256 and its test accuracy."""
    identity = {"test_accuracy": (classifier.model_config.get("metrics", {}).get("best") or {}).get("accuracy")}
    weights = getattr(classifier, "weights_path", None)
    if weights is not None:
        identity["sha256"] = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    return identity


def real_image_reference(classifier, train_set: ImageDataset, test_set: ImageDataset, device, autocast_dtype=None,
                         n: int = QUALITY_SAMPLES) -> dict[str, float]:
    """What real images score, the row to read generators' figures against: the test images'
    class consistency (the classifier's accuracy) and IS analogue, and the Frechet distance of
    ``n`` training images to the test images (the FD-cifargen a perfect generator would get)."""
    probs, test_features = classifier_outputs(classifier, _real_images(test_set, device), autocast_dtype)
    figures = _labelled_figures(probs, test_set.labels.numpy())
    n = min(n, len(train_set))
    train_subset = train_set.head(n)
    _, train_features = classifier_outputs(classifier, _real_images(train_subset, device), autocast_dtype)
    figures["fd_cifargen"] = frechet_distance(train_features, test_features)
    figures["diversity"] = (within_class_spread(train_features, train_subset.labels.numpy())
                            / within_class_spread(test_features, test_set.labels.numpy()))
    figures["quality_samples"] = n
    return figures


def inception_metrics(model, test_set: ImageDataset, device, weights: str | os.PathLike | None = None,
                      n: int = QUALITY_SAMPLES, seed: int = 0, log=print) -> dict[str, float] | None:
    """Inception FID, IS and KID from ``torch-fidelity``, or None (with one line to ``log``) when
    the library or its Inception weights are not on this machine. Never downloads."""
    try:
        import torch_fidelity
    except ImportError:
        log("Inception FID/IS/KID skipped: torch-fidelity is not installed (pip install torch-fidelity)")
        return None
    if weights is None:
        weights = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS
    if not Path(weights).is_file():
        log(f"Inception FID/IS/KID skipped: no Inception weights at {weights} (pass --inception-weights PATH)")
        return None

    class _Images(torch.utils.data.Dataset):
        def __init__(self, images: torch.Tensor):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    samples = torch.cat([(x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                         for x, _ in generated_batches(model, n, seed, device)])
    try:
        result = torch_fidelity.calculate_metrics(
            input1=_Images(samples), input2=_Images(test_set.images), isc=True, fid=True, kid=True,
            feature_extractor_weights_path=str(weights), cuda=torch.device(device).type == "cuda", verbose=False)
    except Exception as exc:  # noqa: BLE001 - an optional extra must never fail the command
        log(f"Inception FID/IS/KID skipped: torch-fidelity failed ({type(exc).__name__}: {exc})")
        return None
    return {"inception_fid": float(result["frechet_inception_distance"]),
            "inception_is": float(result["inception_score_mean"]),
            "inception_kid": float(result["kernel_inception_distance_mean"])}
