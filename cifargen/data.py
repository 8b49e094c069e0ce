"""CIFAR-10 and image-folder data sets, held whole in memory as uint8 tensors.

The official "python version" of CIFAR-10 is a set of pickles. Pickles can run code when loaded,
so :class:`_CifarUnpickler` accepts only the handful of objects the official files contain.

Training never uses a DataLoader: the whole split sits on the training device as one uint8
tensor, each epoch draws a seeded permutation, batches are formed by indexing and converted to
float in [0, 1] one batch at a time (see :class:`BatchLoader`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .errors import DataError
from .folders import is_image_folder, list_split, load_folder_split
from .splits import SPLIT_SEED, held_out_split, stratified_indices

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
DATA_DIR_ENV = "CIFARGEN_DATA_DIR"


def default_data_dir() -> str:
    """The data root used when none is given: ``$CIFARGEN_DATA_DIR`` or ``./data``."""
    return os.environ.get(DATA_DIR_ENV, "data")


@dataclass
class ImageDataset:
    """A whole split in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str = "cifar10"          # the data set's name: with the classes and image size, its identity
    info: dict = field(default_factory=dict)  # where the split came from and how it was made (metrics.json)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int | None) -> "ImageDataset":
        """The first ``n`` images (all of them when ``n`` is None)."""
        if n is None:
            return self
        if n <= 0 or n > len(self):
            raise DataError(f"asked for the first {n} images, but the split holds {len(self)}: use a limit between 1 and {len(self)}")
        return ImageDataset(self.images[:n], self.labels[:n], self.class_names, self.name, dict(self.info))

    def subset(self, indices) -> "ImageDataset":
        """The images at ``indices``, in that order."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], self.class_names, self.name, dict(self.info))

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def identity(self) -> dict:
        """What makes two splits the same data set: name, classes and image size."""
        return {"name": self.name, "class_names": list(self.class_names), "image_size": self.image_size}

    def to(self, device) -> "ImageDataset":
        return ImageDataset(self.images.to(device), self.labels.to(device), self.class_names, self.name, self.info)


# --------------------------------------------------------------------------------------------
# The official pickles
# --------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals found in the official CIFAR-10 files.

    Those files hold dicts, lists, strings, ints and numpy arrays; an array is rebuilt through
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``. Any other
    global (``os.system``, ``builtins.eval``, ...) is refused, so a planted file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of the CIFAR-10 format") from None


@dataclass(frozen=True)
class CifarFormat:
    """One of the official "python version" data sets: where its files are and what their keys are."""

    name: str                    # cifar10, cifar100: the data set's name in its identity
    title: str                   # for messages
    url: str
    md5: str                     # of the archive, as published
    archive: str
    folder: str                  # what the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: str              # the label list in each batch (CIFAR-100: the 100 fine labels)
    names_key: str               # the class-name list in the meta file
    num_classes: int


CIFAR10 = CifarFormat("cifar10", "CIFAR-10", CIFAR10_URL, CIFAR10_MD5, CIFAR10_ARCHIVE, CIFAR10_FOLDER,
                      TRAIN_BATCHES, TEST_BATCHES, "batches.meta", "labels", "label_names", 10)
CIFAR100 = CifarFormat("cifar100", "CIFAR-100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python",
                       ("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100)
CIFAR_FORMATS = {fmt.name: fmt for fmt in (CIFAR10, CIFAR100)}


def read_cifar_batch(raw: bytes, source: str, fmt: CifarFormat = CIFAR10) -> tuple[np.ndarray, np.ndarray]:
    """Parse one official batch file into (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    Raises :class:`DataError` naming ``source`` for anything that is not a valid batch.
    """
    fix = "delete it and run again to download a fresh copy, or point --data-dir at a good copy"
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any parse failure of untrusted bytes is a data error
        raise DataError(f"{source} is not a valid {fmt.title} batch file ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{source} does not hold a {fmt.title} batch (expected a dict); {fix}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get(fmt.labels_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{source} has no uint8 'data' array of shape (N, 3072); {fix}")
    top = fmt.num_classes - 1
    if not isinstance(labels, list) or len(labels) != data.shape[0] or not all(isinstance(v, int) and 0 <= v <= top for v in labels):
        raise DataError(f"{source} has no list '{fmt.labels_key}' of {data.shape[0]} labels in 0..{top}; {fix}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _read_class_names(raw: bytes, source: str, fmt: CifarFormat = CIFAR10) -> tuple[str, ...]:
    """The class names in a meta file: one distinct, non-empty name per label 0..num_classes-1."""
    fix = "delete it or point --data-dir at a good copy"
    try:
        meta = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[fmt.names_key.encode()])
    except Exception:
        raise DataError(f"{source} is not a valid {fmt.title} {fmt.meta_file} file; {fix}") from None
    # The batch files' labels run 0..num_classes-1 (read_cifar_batch checks it), so label i must name names[i].
    if len(names) != fmt.num_classes:
        raise DataError(f"{source} lists {len(names)} class names, but {fmt.title} labels run 0..{fmt.num_classes - 1} "
                        f"and need {fmt.num_classes}; {fix}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or not all(n.strip() for n in names):
        problem = f"repeats {', '.join(map(repr, repeated))}, so labels would share a name" if repeated else "has an empty name"
        raise DataError(f"{source}: the class list {problem}; {fix}")
    return names


def _batch_files(root: Path, names: tuple[str, ...], fmt: CifarFormat = CIFAR10) -> Iterator[tuple[str, bytes]]:
    """Yield (source, bytes) for each named batch, from the extracted folder or the archive."""
    folder = root / fmt.folder
    if folder.is_dir():
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path} is missing: the {fmt.title} folder is incomplete; restore it or delete {folder} to download again")
            yield str(path), path.read_bytes()
        return
    archive = root / fmt.archive
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member = f"{fmt.folder}/{name}"
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise DataError(f"{archive} has no {member}: not the {fmt.title} python archive; delete it and run again to download it")
                yield f"{archive}:{member}", handle.read()
    except Exception as exc:  # gzip/tar/zlib errors of a damaged archive
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{archive} is not a readable {fmt.title} archive ({exc}); delete it and run again to download it") from None


def has_cifar(root: str | os.PathLike, fmt: CifarFormat = CIFAR10) -> bool:
    """Whether ``root`` holds the data set of ``fmt`` (the extracted folder or the archive)."""
    root = Path(root)
    return (root / fmt.folder).is_dir() or (root / fmt.archive).is_file()


def has_cifar10(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds CIFAR-10 (the extracted folder or the archive)."""
    return has_cifar(root, CIFAR10)


def load_cifar(root: str | os.PathLike, train: bool, download: bool = True, fmt: CifarFormat = CIFAR10) -> ImageDataset:
    """Load the train or test split of CIFAR-10 or CIFAR-100 (``fmt``) from ``root``, downloading it if
    allowed and absent."""
    root = Path(root)
    if not has_cifar(root, fmt):
        if not download:
            raise DataError(f"no {fmt.title} in {root}: put {fmt.folder}/ or {fmt.archive} there, or pass --data-dir")
        download_cifar(root, fmt)
    images, labels = [], []
    for source, raw in _batch_files(root, fmt.train_files if train else fmt.test_files, fmt):
        x, y = read_cifar_batch(raw, source, fmt)
        images.append(x)
        labels.append(y)
    (meta_source, meta_raw), = _batch_files(root, (fmt.meta_file,), fmt)
    class_names = _read_class_names(meta_raw, meta_source, fmt)
    return ImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), class_names,
                        name=fmt.name)


def load_cifar10(root: str | os.PathLike, train: bool, download: bool = True) -> ImageDataset:
    """Load the CIFAR-10 train or test split from ``root`` (downloading it if allowed and absent)."""
    return load_cifar(root, train, download, CIFAR10)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar(root: Path, fmt: CifarFormat = CIFAR10, url: str | None = None, timeout: float = 15.0) -> Path:
    """Download the official archive of ``fmt`` into ``root`` with a progress bar and verify its published MD5.

    The download goes to a ``.part`` file that is removed on any failure, so a broken
    download never looks like data. Offline, fails at once with instructions.
    """
    url = url or fmt.url
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data folder {root} ({exc.strerror or exc}); pass --data-dir FOLDER") from None
    target = root / fmt.archive
    partial = root / (fmt.archive + ".part")
    manual = (f"download {url} by hand and put it (or its extracted {fmt.folder}/ folder) in {root.resolve()}, "
              f"or pass --data-dir DIR (or set {DATA_DIR_ENV}) to a folder that holds it")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=fmt.title) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download {fmt.title} ({exc}); {manual}") from None
    got = _md5(partial)
    if got != fmt.md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"downloaded archive has MD5 {got}, expected {fmt.md5}; the partial file was removed. Run again, or {manual}")
    os.replace(partial, target)
    return target


def download_cifar10(root: Path, timeout: float = 15.0) -> Path:
    """Download CIFAR-10 into ``root`` (see :func:`download_cifar`)."""
    return download_cifar(root, CIFAR10, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Choosing the data set, image size, held-out split and limits
# --------------------------------------------------------------------------------------------

DATASETS = ("auto", "cifar10", "cifar100", "folder")


def load_image_folder(root: str | os.PathLike, image_size: int = 32, class_names: tuple[str, ...] | None = None,
                      progress: bool = False) -> ImageDataset:
    """Read ``root/<class>/<images>`` (any Pillow format, size and mode) at ``image_size`` pixels."""
    root = Path(root)
    return _folder_dataset(load_folder_split(root, image_size, class_names, progress=progress), root, root)


def detect_dataset(root: str | os.PathLike, dataset: str = "auto") -> str:
    """Which data set ``root`` holds: ``dataset`` unless it is ``auto``.

    A folder that does not exist yet, or is empty, means CIFAR-10 (downloaded there); a folder
    with files but neither CIFAR-10 nor images is an error, never a silent download.
    """
    if dataset not in DATASETS:
        raise DataError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset != "auto":
        return dataset
    root = Path(root)
    for fmt in CIFAR_FORMATS.values():
        if has_cifar(root, fmt):
            return fmt.name
    if is_image_folder(root):
        return "folder"
    if root.is_file():
        raise DataError(f"--data-dir {root} is a file; pass the folder that holds the data")
    if root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir()):
        only = "train/ has no <class>/ folders with images" if (root / "train").is_dir() else \
            "it has neither CIFAR-10 nor <class>/ folders of images"
        raise DataError(f"--data-dir {root} holds no data cifargen reads ({only}); expected "
                        f"{CIFAR10_FOLDER}/, {CIFAR10_ARCHIVE}, {CIFAR100.folder}/ or <class>/<images> "
                        "(optionally under train/ and test/)")
    return "cifar10"


def peek_identity(root: str | os.PathLike, dataset: str = "auto", image_size: int = 32) -> dict:
    """The identity (name, classes, image size) of the data in ``root``, without decoding any image."""
    kind = detect_dataset(root, dataset)
    root = Path(root)
    if kind in CIFAR_FORMATS:
        fmt = CIFAR_FORMATS[kind]
        if not has_cifar(root, fmt):  # training downloads it next anyway
            download_cifar(root, fmt)
        (source, raw), = _batch_files(root, (fmt.meta_file,), fmt)
        return {"name": fmt.name, "class_names": list(_read_class_names(raw, source, fmt)), "image_size": image_size}
    base = root / "train" if (root / "train").is_dir() else root
    _, _, names, _ = list_split(base)
    return {"name": root.resolve().name, "class_names": list(names), "image_size": image_size}


def load_splits(root: str | os.PathLike, dataset: str = "auto", image_size: int = 32, test_fraction: float = 0.1,
                limit_train: int | None = None, limit_test: int | None = None, download: bool = True,
                progress: bool = True, log=None) -> tuple[ImageDataset, ImageDataset]:
    """The (train, test) splits of the data in ``root`` at ``image_size`` pixels.

    - CIFAR-10 or CIFAR-100 (official "python version"; CIFAR-10 is downloaded when the folder is
      empty or absent, either with ``dataset`` naming it): its own splits (CIFAR-100: fine labels),
      resized when ``image_size`` is not 32. Limits take the first N images (the official files
      are in random order).
    - An image folder with ``train/`` and ``test/``: those splits. Without ``test/``: a seeded,
      class-stratified ``test_fraction`` of the images is held out as the test split (never the
      training images themselves). Limits take a seeded, class-stratified subset.

    Each split's ``info`` says where it came from and how it was made (``metrics.json`` records it).
    """
    log = log or (lambda line: None)
    kind = detect_dataset(root, dataset)
    root = Path(root)
    if kind in CIFAR_FORMATS:
        fmt = CIFAR_FORMATS[kind]
        train = load_cifar(root, train=True, download=download, fmt=fmt).head(limit_train)
        test = load_cifar(root, train=False, download=download, fmt=fmt).head(limit_test)
        for split, name in ((train, "train"), (test, "test")):
            split.info.update({"source": str(root), "split": f"the official {name} split", "limit": "first N"})
        if image_size != train.image_size:
            train, test = resize_dataset(train, image_size), resize_dataset(test, image_size)
        return train, test
    base = root / "train" if (root / "train").is_dir() else root
    train = load_folder_split(base, image_size, progress=progress, log=log)
    train_set = _folder_dataset(train, root, base)
    if (root / "train").is_dir() and (root / "test").is_dir():
        test = load_folder_split(root / "test", image_size, class_names=train.class_names, progress=progress, log=log)
        test_set = _folder_dataset(test, root, root / "test")
        train_set.info["split"], test_set.info["split"] = "the train/ folder", "the test/ folder"
    else:
        if not 0 < test_fraction < 1:
            raise DataError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
        train_idx, test_idx = held_out_split(train.labels, test_fraction)
        if len(test_idx) == 0:
            raise DataError(f"{base} has too few images to hold out a test split ({len(train.labels)}); "
                            "add images or a test/ folder")
        full = train_set
        train_set, test_set = full.subset(train_idx), full.subset(test_idx)
        test_set.info["skipped"] = []  # the folder's unreadable files are listed once, with the training split
        how = (f"a seeded (seed {SPLIT_SEED}), class-stratified {test_fraction:g} of {base} held out "
               f"(no test/ folder)")
        train_set.info["split"], test_set.info["split"] = f"the rest of {base} after {how}", how
        log(f"no test/ folder in {root}: holding out {len(test_idx)} of {len(full)} images as the test split "
            f"(--test-fraction {test_fraction:g})")
    train_set = _stratified_limit(train_set, limit_train)
    test_set = _stratified_limit(test_set, limit_test)
    return train_set, test_set


def _folder_dataset(split, root: Path, folder: Path) -> ImageDataset:
    return ImageDataset(split.images, split.labels, split.class_names, name=root.resolve().name,
                        info={"source": str(folder), "skipped": split.skipped, "from_cache": split.from_cache,
                              "limit": "seeded, class-stratified"})


def _stratified_limit(dataset: ImageDataset, n: int | None) -> ImageDataset:
    if n is None:
        return dataset
    if n <= 0 or n > len(dataset):
        raise DataError(f"asked for {n} images, but the split holds {len(dataset)}: use a limit between 1 and {len(dataset)}")
    return dataset.subset(stratified_indices(dataset.labels, n))


def resize_dataset(dataset: ImageDataset, image_size: int) -> ImageDataset:
    """``dataset`` resized to ``image_size`` pixels square (Pillow bicubic; CIFAR-10 at 64x64, say)."""
    images = np.stack([np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BICUBIC))
                       for img in dataset.images.permute(0, 2, 3, 1).numpy()])
    info = {**dataset.info, "resized": f"{dataset.image_size} -> {image_size} px (bicubic)"}
    return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), dataset.labels,
                        dataset.class_names, dataset.name, info)


def load_dataset(root: str | os.PathLike, train: bool, download: bool = True,
                 class_names: tuple[str, ...] | None = None, image_size: int = 32,
                 test_fraction: float = 0.1) -> ImageDataset:
    """One split of the data in ``root`` (see :func:`load_splits`)."""
    splits = load_splits(root, image_size=image_size, test_fraction=test_fraction, download=download, progress=False)
    dataset = splits[0 if train else 1]
    if class_names is not None and tuple(class_names) != dataset.class_names:
        raise DataError(f"{root} has classes {', '.join(dataset.class_names)}, expected {', '.join(class_names)}")
    return dataset


# --------------------------------------------------------------------------------------------
# Batches by indexing
# --------------------------------------------------------------------------------------------

def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] to float32 in [0, 1] (no mean/std normalisation)."""
    return images.float().div_(255.0)


def steps_per_epoch(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Steps each process takes per epoch: that of the largest shard (DDP needs every rank to take
    the same number)."""
    largest_shard = -(-num_images // world_size)
    return -(-largest_shard // batch_size)


class BatchLoader:
    """Batches of a whole split kept on ``device`` as uint8.

    ``shuffle=True`` draws one permutation per epoch from a seeded CPU generator, whose state
    is part of training checkpoints so that a resumed run sees the same order. ``rank`` and
    ``world_size`` give each distributed process a disjoint slice of every permutation.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device, shuffle: bool, seed: int = 0,
                 memory_format=torch.channels_last, rank: int = 0, world_size: int = 1):
        self.data = dataset.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = memory_format
        self.rank, self.world_size = rank, world_size

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the next epoch (advances the generator when shuffling)."""
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        return steps_per_epoch(len(self.data), self.batch_size, self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (float images, labels) batches, skipping the first ``start_step`` batches."""
        order = self.indices().to(self.data.images.device)
        if self.world_size == 1:
            chunks = order.split(self.batch_size)
        else:  # near-equal batches, so that shards one image apart still take the same number of steps
            chunks = order.tensor_split(len(self))
        for index in chunks[start_step:]:
            x = to_float(self.data.images[index]).contiguous(memory_format=self.memory_format)
            yield x, self.data.labels[index]
