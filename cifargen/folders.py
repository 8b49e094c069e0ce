"""Image folders: ``root/<class>/<images>``, or ``root/train/<class>/...`` and ``root/test/<class>/...``.

Every format Pillow reads is accepted, at any size and in any mode: each image is converted to
RGB (grayscale, palette, 16-bit and transparent images included), resized on its shorter side
and center-cropped to ``image_size`` pixels. Decoding runs in worker processes with a progress
bar, and each decoded split is cached (uint8, in the cifargen cache folder) under a key made of
the folder's file list, sizes and modification times and the image size, so a second run starts
in seconds and any change to the folder decodes it again.

Unreadable, truncated and oversized files are skipped and counted rather than stopping a run of
tens of thousands of images; :func:`load_folder_split` returns their names and reasons, which
training writes into the run folder (``skipped_images.txt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from .errors import DataError
from .runtime import cache_root

CACHE_FORMAT = 1                  # bump when the decoding changes, so that old cache entries are ignored
PARALLEL_FROM = 2_000             # folders smaller than this decode in-process (worker start-up costs more)
CHUNK = 256                       # images per worker task
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def image_suffixes() -> frozenset[str]:
    """File name endings of every image format this Pillow can read (``.png``, ``.webp``, ``.bmp``, ...)."""
    Image.init()
    return frozenset(suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def class_folders(root: Path) -> list[Path]:
    """The class folders of ``root``: its visible sub-folders, sorted by name."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_files(folder: Path, suffixes: frozenset[str] | None = None) -> list[os.DirEntry]:
    """The image files directly inside ``folder``, sorted by name."""
    suffixes = suffixes or image_suffixes()
    with os.scandir(folder) as entries:
        files = [e for e in entries if e.is_file() and not e.name.startswith(".")
                 and os.path.splitext(e.name)[1].lower() in suffixes]
    return sorted(files, key=lambda e: e.name)


def is_image_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` looks like ``root/<class>/<images>`` (possibly under ``train/``)."""
    root = Path(root)
    if not root.is_dir():
        return False
    base = root / "train" if (root / "train").is_dir() else root
    return any(image_files(folder) for folder in class_folders(base))


# --------------------------------------------------------------------------------------------
# Decoding one image
# --------------------------------------------------------------------------------------------

def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit values scaled down, transparent pixels composited on white."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "F" and values.max(initial=0) > 255:
            values = values / 257.0  # 65535 -> 255
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(path: str, size: int) -> np.ndarray:
    """One image file as a uint8 array (size, size, 3): RGB, shorter side resized to ``size``, center-cropped.

    Raises ``OSError``/``ValueError``/Pillow errors for files that cannot be decoded safely.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # oversized images: refused, not decoded
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size
            img.load()
            rgb = to_rgb(img)
    return np.asarray(ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC))


def _decode_chunk(paths: list[str], size: int) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Worker task: (decoded images, their positions in ``paths``, (position, reason) of the failures)."""
    images, ok, failed = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(decode_image(path, size))
            ok.append(i)
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            failed.append((i, reason))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, ok, failed


def decode_images(paths: list[str], size: int, workers: int | None = None, progress: bool = True,
                  desc: str = "decoding") -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode ``paths`` in parallel worker processes; returns (images (M, size, size, 3) uint8, the
    indices of the decoded paths, (index, reason) of each file that could not be decoded)."""
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    parts, ok, failed = [], [], []

    def collect(start: int, result) -> None:
        images, chunk_ok, chunk_failed = result
        parts.append(images)
        ok.extend(start + i for i in chunk_ok)
        failed.extend((start + i, reason) for i, reason in chunk_failed)
        bar.update(len(chunk_ok) + len(chunk_failed))

    try:
        if len(paths) < PARALLEL_FROM or workers <= 1:
            for n, chunk in enumerate(chunks):
                collect(n * CHUNK, _decode_chunk(chunk, size))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for n, result in enumerate(pool.map(_decode_chunk, chunks, [size] * len(chunks))):
                    collect(n * CHUNK, result)
    finally:
        bar.close()
    images = np.concatenate(parts) if parts else np.zeros((0, size, size, 3), np.uint8)
    return images, ok, failed


# --------------------------------------------------------------------------------------------
# A split: listing, cache, decoding
# --------------------------------------------------------------------------------------------

@dataclass
class FolderSplit:
    """A decoded split of an image folder: ``images`` uint8 (N, 3, S, S), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file relative to the split folder, reason)
    from_cache: bool = False


def list_split(folder: Path, class_names: tuple[str, ...] | None = None
               ) -> tuple[list[os.DirEntry], list[int], tuple[str, ...], list[str]]:
    """The image files of ``folder/<class>/``, their labels, the class names and the empty class folders.

    Classes are the sorted names of the class folders that hold images; pass the training split's
    ``class_names`` when listing a test split, so that labels agree.
    """
    suffixes = image_suffixes()
    found = [(f, image_files(f, suffixes)) for f in class_folders(folder)]
    empty = [f.name for f, files in found if not files]
    if class_names is None:
        class_names = tuple(f.name for f, files in found if files)
    unknown = [f.name for f, files in found if files and f.name not in class_names]
    if unknown:
        raise DataError(f"{folder} has class folders {unknown} that the training split lacks; use the same classes in both")
    entries, labels = [], []
    for f, files in found:
        if files:
            index = class_names.index(f.name)
            entries += files
            labels += [index] * len(files)
    return entries, labels, tuple(class_names), empty


def content_key(folder: Path, entries: list[os.DirEntry], image_size: int, class_names: tuple[str, ...]) -> str:
    """A digest of what a decoded split depends on: file names, sizes, modification times, the image size."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, image_size, list(class_names)]).encode())
    for entry in entries:
        stat = entry.stat()
        digest.update(f"{os.path.relpath(entry.path, folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_file(folder: Path, image_size: int) -> Path:
    """Where the decoded split of ``folder`` at ``image_size`` is cached (one entry per folder and size)."""
    name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "images" / f"{name}-{image_size}px.npz"


def _read_cache(path: Path, key: str) -> FolderSplit | None:
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None  # the folder changed since: decode again
            meta = json.loads(str(saved["meta"]))
            return FolderSplit(torch.from_numpy(saved["images"]), torch.from_numpy(saved["labels"]),
                               tuple(meta["class_names"]), [tuple(s) for s in meta["skipped"]], from_cache=True)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # missing or damaged (a truncated archive raises BadZipFile): decode again


def _write_cache(path: Path, key: str, split: FolderSplit) -> None:
    """Write the cache entry atomically; a cache that cannot be written only costs the next run time."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:
            np.savez(f, images=split.images.numpy(), labels=split.labels.numpy(), key=np.array(key),
                     meta=np.array(json.dumps({"class_names": split.class_names, "skipped": split.skipped})))
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):  # nothing to remove where the folder could not be made
            partial.unlink(missing_ok=True)


def load_folder_split(folder: str | os.PathLike, image_size: int = 32, class_names: tuple[str, ...] | None = None,
                      cache: bool = True, progress: bool = True, workers: int | None = None, log=None) -> FolderSplit:
    """Read ``folder/<class>/<images>`` at ``image_size`` pixels, from the cache when the folder is unchanged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist: pass --data-dir pointing at root/<class>/<images>")
    entries, labels, names, empty = list_split(folder, class_names)
    if not entries:
        raise DataError(f"no readable image files under {folder}/<class>/ (Pillow formats such as .png, .jpg, .webp): "
                        "check --data-dir")
    if empty and log:
        log(f"{folder}: empty class folders ignored: {', '.join(empty)}")
    key = content_key(folder, entries, image_size, names)
    where = cache_file(folder, image_size)
    if cache:
        cached = _read_cache(where, key)
        if cached is not None:
            return cached
    paths = [e.path for e in entries]
    images, ok, failed = decode_images(paths, image_size, workers, progress, desc=f"decoding {folder.name}")
    if not ok:
        raise DataError(f"none of the {len(paths)} image files under {folder} could be read "
                        f"(first: {os.path.relpath(paths[failed[0][0]], folder)}: {failed[0][1]}); check the files")
    split = FolderSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                        torch.tensor([labels[i] for i in ok], dtype=torch.int64), names,
                        [(os.path.relpath(paths[i], folder), reason) for i, reason in failed])
    if cache:
        _write_cache(where, key, split)
    return split
