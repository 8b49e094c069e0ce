"""Test-set figures: the discriminator's accuracy, per-class accuracy and confusion by hand."""

import numpy as np
import torch

from cifargen.data import ImageDataset
from cifargen.evaluation import CLASSIFY_BATCH, classifier_predictions, evaluate_acgan, evaluate_discriminator, evaluate_vae
from cifargen.models import VAE, VAEConfig


class FixedAnswers(torch.nn.Module):
    """A stand-in discriminator whose class head answers from a table indexed by the image's first pixel."""

    def __init__(self, answers):
        super().__init__()
        self.answers = torch.tensor(answers)

    def forward(self, x):
        index = (x[:, 0, 0, 0] * 255).round().long()
        return torch.zeros(len(x)), torch.nn.functional.one_hot(self.answers[index], 3).float()


def test_discriminator_figures_against_a_count_by_hand():
    true = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    predicted = [0, 1, 1, 1, 0, 2, 2, 0, 2, 0]
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(10, dtype=torch.uint8)  # image i answers predicted[i]
    model = torch.nn.Module()
    model.discriminator = FixedAnswers(predicted)
    figures = evaluate_discriminator(model, ImageDataset(images, torch.tensor(true), ("a", "b", "c")), "cpu")
    confusion = np.zeros((3, 3), dtype=int)
    for t, p in zip(true, predicted):
        confusion[t, p] += 1
    assert figures["confusion"] == confusion.tolist()
    assert figures["accuracy"] == 7 / 10
    assert figures["per_class_accuracy"] == {"a": 2 / 3, "b": 2 / 3, "c": 3 / 4}


def test_predictions_over_several_batches_keep_every_image_in_order():
    n = 2 * CLASSIFY_BATCH + 37  # two full batches and a partial one
    generator = torch.Generator().manual_seed(0)
    answers = torch.randint(0, 3, (256,), generator=generator)
    true = torch.randint(0, 3, (n,), generator=generator)
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256  # image i answers answers[i % 256]
    data = ImageDataset(images, true, ("a", "b", "c"))
    predicted, labels = classifier_predictions(FixedAnswers(answers.tolist()), data, "cpu")
    expected = [int(answers[i % 256]) for i in range(n)]
    assert predicted.tolist() == expected and labels.tolist() == true.tolist()
    by_hand = sum(p == t for p, t in zip(expected, true.tolist())) / n
    assert evaluate_acgan(FixedAnswers(answers.tolist()), data, "cpu")["accuracy"] == by_hand


def test_vae_figures_are_means_per_sample_and_repeatable():
    model = VAE(VAEConfig(latent_dim=8, width=8)).eval()
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    data = ImageDataset(images, torch.zeros(30, dtype=torch.long), tuple("abcdefghij"))
    first = evaluate_vae(model, data, "cpu", batch_size=7)
    again = evaluate_vae(model, data, "cpu", batch_size=30)  # batching does not change a mean per sample
    assert set(first) == {"mse", "ssim_loss", "bce", "rec", "kl"}
    assert abs(first["rec"] - (first["mse"] + first["ssim_loss"] + first["bce"])) < 1e-6
    for key in first:
        assert abs(first[key] - again[key]) < 1e-4, key
