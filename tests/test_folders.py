"""Image folders of any size, mode and Pillow format; the decode cache; held-out splits; limits."""

import os

import numpy as np
import pytest
from PIL import Image

from cifargen.data import load_splits
from cifargen.errors import DataError
from cifargen.folders import decode_image, load_folder_split, to_rgb


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def write_folder(root, counts, size=32, seed=0, suffix=".png"):
    """root/<class>/<i><suffix> with counts[class] smooth random images of ``size`` pixels."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        for i in range(n):
            base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
            save(root / name / f"{i:03d}{suffix}", np.kron(base, np.ones((4, 4, 1), np.uint8)))


# --- one image ------------------------------------------------------------------------------

def test_wide_image_is_center_cropped(tmp_path):
    # 64 wide, 32 high: the shorter side is already 32, so the result is exactly the middle 32 columns.
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, :16] = (255, 0, 0)
    array[:, 16:48] = np.arange(32, dtype=np.uint8)[None, :, None] * 8
    array[:, 48:] = (0, 0, 255)
    save(tmp_path / "wide.png", array)
    assert np.array_equal(decode_image(str(tmp_path / "wide.png"), 32), array[:, 16:48])


def test_large_image_is_resized_on_its_shorter_side(tmp_path):
    # A 128x96 image of one colour, to 32: same colour, 32x32.
    save(tmp_path / "big.jpg", np.full((96, 128, 3), (200, 100, 50), np.uint8))
    out = decode_image(str(tmp_path / "big.jpg"), 32)
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - (200, 100, 50)).max() <= 3  # JPEG rounding


def test_modes_are_converted_not_refused(tmp_path):
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    save(tmp_path / "gray.png", gray, "L")
    assert np.array_equal(decode_image(str(tmp_path / "gray.png"), 32), np.repeat(gray[..., None], 3, 2))

    sixteen = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256) * 257  # 16-bit values k * 257
    Image.fromarray(sixteen).save(tmp_path / "deep.png")  # uint16: mode I;16
    expected = (sixteen // 257).astype(np.uint8)
    assert np.array_equal(decode_image(str(tmp_path / "deep.png"), 32)[..., 0], expected)

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16] = (10, 20, 30, 255)  # top half opaque, bottom half fully transparent
    save(tmp_path / "alpha.png", rgba, "RGBA")
    out = decode_image(str(tmp_path / "alpha.png"), 32)
    assert (out[:16] == (10, 20, 30)).all() and (out[16:] == 255).all()  # transparent: white

    palette = Image.fromarray(np.full((32, 32, 3), (0, 128, 255), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "palette.gif")
    assert (decode_image(str(tmp_path / "palette.gif"), 32) == (0, 128, 255)).all()
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"


def test_every_pillow_format_is_read(tmp_path):
    for suffix in (".bmp", ".webp", ".tif", ".jpeg"):
        write_folder(tmp_path / suffix[1:], {"a": 2, "b": 2}, suffix=suffix)
        split = load_folder_split(tmp_path / suffix[1:], cache=False, progress=False)
        assert split.images.shape == (4, 3, 32, 32) and split.labels.tolist() == [0, 0, 1, 1]


# --- a folder -------------------------------------------------------------------------------

def test_unreadable_files_are_skipped_and_listed(tmp_path, monkeypatch):
    write_folder(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "cat" / "zz-not-an-image.png").write_bytes(b"hello")
    whole = (tmp_path / "dog" / "000.png").read_bytes()
    (tmp_path / "dog" / "zz-truncated.png").write_bytes(whole[: len(whole) // 2])
    save(tmp_path / "dog" / "zz-huge.png", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 32x32 passes, 64x64 is "too large"
    split = load_folder_split(tmp_path, cache=False, progress=False)
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(name for name, _ in split.skipped) == ["cat/zz-not-an-image.png", "dog/zz-huge.png",
                                                          "dog/zz-truncated.png"]


def test_odd_class_names_empty_and_single_classes(tmp_path):
    write_folder(tmp_path / "a", {"chat noir": 2, "été": 2, "empty": 0})
    (tmp_path / "a" / "empty").mkdir()
    lines = []
    split = load_folder_split(tmp_path / "a", cache=False, progress=False, log=lines.append)
    assert split.class_names == ("chat noir", "été") and "empty" in lines[0]
    write_folder(tmp_path / "b", {"only": 3})
    assert load_folder_split(tmp_path / "b", cache=False, progress=False).class_names == ("only",)


def test_parallel_decoding_matches_in_process(tmp_path, monkeypatch):
    import cifargen.folders as folders

    write_folder(tmp_path, {"a": 6, "b": 5})
    serial = load_folder_split(tmp_path, cache=False, progress=False, workers=1)
    monkeypatch.setattr(folders, "PARALLEL_FROM", 1)
    monkeypatch.setattr(folders, "CHUNK", 3)
    parallel = load_folder_split(tmp_path, cache=False, progress=False, workers=2)
    assert (serial.images == parallel.images).all() and (serial.labels == parallel.labels).all()


def test_cache_is_used_and_invalidated(tmp_path):
    write_folder(tmp_path, {"a": 3, "b": 3})
    first = load_folder_split(tmp_path, progress=False)
    second = load_folder_split(tmp_path, progress=False)
    assert not first.from_cache and second.from_cache
    assert (first.images == second.images).all() and (first.labels == second.labels).all()
    assert not load_folder_split(tmp_path, image_size=16, progress=False).from_cache  # another size
    # A changed file (new content and modification time) and a new file: decoded again.
    save(tmp_path / "a" / "000.png", np.zeros((32, 32, 3), np.uint8))
    os.utime(tmp_path / "a" / "000.png", ns=(1, 1))
    save(tmp_path / "b" / "new.png", np.zeros((32, 32, 3), np.uint8))
    third = load_folder_split(tmp_path, progress=False)
    assert not third.from_cache and len(third.labels) == 7 and (third.images[0] == 0).all()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_cache_entry_is_decoded_again(tmp_path, damage):
    from cifargen.folders import cache_file

    write_folder(tmp_path, {"a": 3, "b": 3})
    first = load_folder_split(tmp_path, progress=False)
    entry = cache_file(tmp_path, 32)
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[:len(data) // 2], "garbage": b"not a zip" * 100, "empty": b""}[damage])
    again = load_folder_split(tmp_path, progress=False)
    assert not again.from_cache and (again.images == first.images).all()
    assert load_folder_split(tmp_path, progress=False).from_cache  # written afresh


# --- splits and limits ----------------------------------------------------------------------

def test_folder_without_test_gets_a_stratified_held_out_split(tmp_path):
    write_folder(tmp_path, {"a": 20, "b": 10, "c": 30})
    train, test = load_splits(tmp_path, test_fraction=0.1, progress=False)
    assert len(test) == 6 and len(train) == 54
    assert np.bincount(test.labels.numpy()).tolist() == [2, 1, 3]  # 10% of each class
    # Disjoint: no test image is a training image.
    flat_train = {bytes(x) for x in train.images.flatten(1).numpy()}
    assert not any(bytes(x) in flat_train for x in test.images.flatten(1).numpy())
    again_train, again_test = load_splits(tmp_path, test_fraction=0.1, progress=False)
    assert (again_test.images == test.images).all() and (again_train.labels == train.labels).all()
    assert "held out" in test.info["split"]


def test_only_train_folder_is_split_and_said(tmp_path):
    write_folder(tmp_path / "train", {"a": 10, "b": 10})
    lines = []
    train, test = load_splits(tmp_path, progress=False, log=lines.append)
    assert len(test) == 2 and len(train) == 18 and "no test/ folder" in lines[-1]


def test_limits_keep_the_class_mix(tmp_path):
    write_folder(tmp_path / "train", {"a": 12, "b": 12, "c": 12, "d": 12})
    write_folder(tmp_path / "test", {"a": 4, "b": 4, "c": 4, "d": 4}, seed=1)
    train, test = load_splits(tmp_path, limit_train=20, limit_test=8, progress=False)
    assert np.bincount(train.labels.numpy()).tolist() == [5, 5, 5, 5]
    assert np.bincount(test.labels.numpy()).tolist() == [2, 2, 2, 2]


def test_image_size_follows_the_flag(tmp_path):
    write_folder(tmp_path, {"a": 4, "b": 4}, size=48)
    train, test = load_splits(tmp_path, image_size=64, test_fraction=0.25, progress=False)
    assert train.images.shape[1:] == (3, 64, 64) and train.identity()["image_size"] == 64


def test_folder_without_images_is_an_error_never_a_download(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no data"):
        load_splits(tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="train/ has no <class>/ folders"):
        load_splits(tmp_path)
