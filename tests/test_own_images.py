"""Training on your own images end to end: 64x64 folders for each model, CIFAR-100, and the
reference classifier that belongs to a data set."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from cifargen import load
from cifargen.cli import main
from cifargen.data import load_splits
from cifargen.errors import DataError
from cifargen.models.vae import levels_for
from cifargen.quality import find_reference_classifier

TINY = ["--epochs", "1", "--width", "4", "--latent-dim", "16", "--no-progress", "--threads", "2", "--no-quality"]


def write_folder(root, classes, per_class, size, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            base[..., c % 3] = 255  # each class leans to one colour: something to learn
            # Mixed sizes and modes: every third image is grayscale and a little larger.
            img = Image.fromarray(np.kron(base, np.ones((8, 8, 1), np.uint8)))
            if i % 3 == 0:
                img = img.convert("L").resize((size + 16, size + 8))
            img.save(root / name / f"{i}.png")


def test_levels_follow_the_image_size():
    # By hand: halve while the size stays whole and at least 4.
    assert [levels_for(s) for s in (16, 32, 48, 64, 96, 128)] == [2, 3, 3, 4, 4, 5]


@pytest.mark.parametrize("model", ["vae", "cvae", "acgan"])
def test_a_64x64_folder_trains_each_model(model, tmp_path):
    data = tmp_path / "photos"
    write_folder(data, ["red fox", "été", "sky"], 12, 64)
    (data / "sky" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "run"
    assert main(["train", model, "--data-dir", str(data), "--out", str(out), "--image-size", "64",
                 "--batch-size", "8", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["image_size"] == 64 and metrics["data"]["class_names"] == ["red fox", "sky", "été"]
    assert "held out" in metrics["data"]["test"]["split"] and metrics["data"]["test"]["images"] == 4  # round(0.1 * 36)
    loaded = load(out)
    assert loaded.config.image_size == 64 and loaded.config.downsamples == 4
    images, _ = loaded.generate(2)
    assert images.shape == (2, 3, 64, 64)
    assert (out / "E1.png").is_file()
    assert metrics["data"]["train"]["skipped_files"] == 1
    assert (out / "skipped_images.txt").read_text().startswith(f"{data}/sky/broken.jpg\t")


def write_cifar100(root, n_train=40, n_test=20):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(n)],
                 b"coarse_labels": [i % 20 for i in range(n)], b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=3))
    meta = {b"fine_label_names": [f"class{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=3))


def test_cifar100_is_detected_with_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    train, test = load_splits(tmp_path, progress=False)
    assert train.name == "cifar100" and len(train.class_names) == 100 and train.class_names[7] == "class07"
    assert train.labels.tolist() == [i % 100 for i in range(40)] and len(test) == 20


def test_cifar100_labels_out_of_range_are_refused(tmp_path):
    write_cifar100(tmp_path)
    batch = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())
    batch[b"fine_labels"][0] = 100
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps(batch, protocol=3))
    with pytest.raises(DataError, match="labels in 0..99"):
        load_splits(tmp_path, dataset="cifar100")


def test_a_100_class_cvae_trains_and_samples(tmp_path):
    write_cifar100(tmp_path / "data", n_train=200, n_test=100)
    out = tmp_path / "run"
    assert main(["train", "cvae", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--batch-size", "50",
                 *TINY]) == 0
    assert main(["sample", str(out), "--out", str(tmp_path / "s"), "--n", "200", "--interpolate"]) == 0
    assert load(out).config.num_classes == 100


def test_quality_figures_only_with_the_classifier_of_the_same_data(tmp_path, capsys):
    write_folder(tmp_path / "a", ["x", "y"], 10, 32)
    write_folder(tmp_path / "b", ["p", "q", "r"], 10, 32, seed=1)
    # A classifier for data set "a", in the cache folder that belongs to it.
    assert main(["classifier", "train", "--data-dir", str(tmp_path / "a"), "--epochs", "1", "--no-progress",
                 "--threads", "2"]) == 0
    train_a, _ = load_splits(tmp_path / "a", progress=False)
    train_b, _ = load_splits(tmp_path / "b", progress=False)
    found, reason = find_reference_classifier(train_a)
    assert found is not None and reason is None
    missing, reason = find_reference_classifier(train_b)
    assert missing is None and "no reference classifier for b (3 classes, 32x32)" in reason
    # Named explicitly, another data set's classifier is refused.
    folder = found.weights_path.parent
    refused, reason = find_reference_classifier(train_b, folder)
    assert refused is None and "was trained on a (2 classes, 32x32), not on b" in reason
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", "vae", "--data-dir", str(tmp_path / "b"), "--out", str(out), "--epochs", "1", "--width", "4",
                 "--no-progress", "--threads", "2"]) == 0
    assert "sample-quality figures skipped: no reference classifier for b" in capsys.readouterr().err
    assert "quality" not in json.loads((out / "metrics.json").read_text())
