import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cifargen import data as data_module
from cifargen.data import (BatchLoader, ImageDataset, load_cifar10, load_dataset, load_image_folder, read_cifar_batch,
                           to_float)
from cifargen.errors import DataError
from conftest import local_cifar_root, make_images


def test_reads_official_layout_in_order(cifar_root):
    train = load_cifar10(cifar_root, train=True, download=False)
    test = load_cifar10(cifar_root, train=False, download=False)
    assert train.images.shape == (320, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (120, 3, 32, 32)
    assert train.class_names[0] == "airplane" and len(train.class_names) == 10
    # Batch 1 comes first, in file order, channels as stored (R plane, G plane, B plane).
    assert np.array_equal(train.images[:64].numpy(), make_images(64, 1))
    assert np.array_equal(train.images[64:128].numpy(), make_images(64, 2))
    assert train.labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


@pytest.mark.skipif(local_cifar_root() is None, reason="set CIFARGEN_TEST_DATA to a built local CIFAR-10 copy")
def test_reads_local_copy_in_official_format():
    test = load_cifar10(local_cifar_root(), train=False, download=False)
    assert test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names[3] == "cat" and test.labels[0] == 3  # the official first test image is a cat


def test_reads_archive_without_extracting(cifar_root, tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(cifar_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_archive = load_cifar10(tmp_path, train=False, download=False)
    from_folder = load_cifar10(cifar_root, train=False, download=False)
    assert torch.equal(from_archive.images, from_folder.images)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_planted_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(DataError, match="not a valid CIFAR-10 batch"):
        read_cifar_batch(pickle.dumps({b"data": Evil()}, protocol=2), "evil_batch")
    assert not marker.exists()


def test_truncated_batch_names_file_and_fix(cifar_root, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in os.listdir(cifar_root / "cifar-10-batches-py"):
        (folder / name).write_bytes((cifar_root / "cifar-10-batches-py" / name).read_bytes())
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"data_batch_3.*(delete|--data-dir)"):
        load_cifar10(tmp_path, train=True, download=False)


def test_wrong_structure_is_refused():
    with pytest.raises(DataError, match="uint8 'data'"):
        read_cifar_batch(pickle.dumps({b"data": [1, 2, 3], b"labels": [0]}, protocol=3), "odd")
    with pytest.raises(DataError, match="labels"):
        arr = np.zeros((2, 3072), np.uint8)
        read_cifar_batch(pickle.dumps({b"data": arr, b"labels": [0, 11]}, protocol=3), "odd")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_data_error(raw):
    with pytest.raises(DataError):
        read_cifar_batch(raw, "fuzz")


def test_offline_fails_at_once_with_instructions(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="--data-dir"):
        load_cifar10(tmp_path / "nowhere", train=True)
    assert not list((tmp_path / "nowhere").glob("*.part"))


def test_checksum_mismatch_removes_partial_file(tmp_path, monkeypatch):
    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "11"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(data_module.urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"not a tar!!"))
    with pytest.raises(DataError, match="MD5"):
        data_module.download_cifar10(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_image_folder(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    train = load_dataset(tmp_path, train=True)
    test = load_dataset(tmp_path, train=False)
    assert len(train) == 6 and len(test) == 4
    assert train.class_names == ("cat", "dog") and train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds no data cifargen reads"):
        load_dataset(tmp_path, train=True)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_image_folder(tmp_path)


def test_batch_loader_covers_each_image_once_and_reshuffles():
    n = 103
    dataset = ImageDataset(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(),
                           torch.arange(n) % 10, tuple("abcdefghij"))
    loader = BatchLoader(dataset, 16, "cpu", shuffle=True, seed=3)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == 7
        seen = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in batches])
        assert sorted(seen.tolist()) == list(range(n))
        epochs.append(seen)
    assert not torch.equal(epochs[0], epochs[1])
    again = BatchLoader(dataset, 16, "cpu", shuffle=True, seed=3)
    assert torch.equal(torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in again]), epochs[0])


def test_batch_loader_shards_cover_epoch_exactly_once():
    n = 50
    dataset = ImageDataset(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), ("a",))
    loaders = [BatchLoader(dataset, 8, "cpu", shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    shards = [loader.indices() for loader in loaders]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    # Shards of 17, 17 and 16 images still take the same number of steps (DDP needs it).
    steps = [len(list(loader)) for loader in loaders]
    assert steps == [len(loaders[0])] * 3 == [3] * 3


def test_to_float_scales_only():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 128 / 255, 1.0]))


def test_limit_larger_than_data_is_refused(cifar_root):
    with pytest.raises(DataError, match="holds 120"):
        load_cifar10(cifar_root, train=False, download=False).head(1000)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_batch_only_raises_data_error_or_parses(data):
    images = make_images(4, 0)
    raw = bytearray(pickle.dumps({b"data": images.reshape(4, -1), b"labels": [0, 1, 2, 3]}, protocol=3))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    try:
        x, y = read_cifar_batch(bytes(raw[:cut]), "mutated")
    except DataError:
        return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and len(y) == len(x)


def test_wrong_archive_names_the_file(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"this is not a gzip file")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*delete it"):
        load_cifar10(tmp_path, train=True, download=False)
    other = tmp_path / "other"
    other.mkdir()
    with tarfile.open(other / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="not the CIFAR-10 python archive"):
        load_cifar10(other, train=True, download=False)


def _copy_with_meta(cifar_root, tmp_path, label_names):
    """A copy of the fake CIFAR-10 whose batches.meta lists ``label_names``."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in os.listdir(cifar_root / "cifar-10-batches-py"):
        (folder / name).write_bytes((cifar_root / "cifar-10-batches-py" / name).read_bytes())
    meta = {b"label_names": [n.encode() for n in label_names], b"num_cases_per_batch": 64, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=3))
    return tmp_path


@pytest.mark.parametrize("names, problem", [
    (["airplane", "automobile", "bird", "cat", "deer"], "lists 5 class names"),
    ([f"c{i}" for i in range(11)], "lists 11 class names"),
    (["cat"] * 2 + [f"c{i}" for i in range(8)], "repeats 'cat'"),
    (["", *[f"c{i}" for i in range(9)]], "empty name"),
])
def test_class_list_that_disagrees_with_the_labels_names_the_meta_file(cifar_root, tmp_path, names, problem):
    root = _copy_with_meta(cifar_root, tmp_path, names)
    for train in (True, False):
        with pytest.raises(DataError, match="batches.meta") as caught:
            load_cifar10(root, train=train, download=False)
        assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_a_short_class_list_stops_training_before_any_step(cifar_root, tmp_path, capsys):
    from cifargen.cli import main

    (tmp_path / "data").mkdir()
    root = _copy_with_meta(cifar_root, tmp_path / "data", list(data_module.CIFAR10_CLASSES[:5]))
    assert main(["train", "cvae", "--data-dir", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--limit-train", "64", "--limit-test", "30", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifargen: ") and "batches.meta" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()
