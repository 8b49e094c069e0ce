"""What the web page asks of the loaded models, without the web framework: checked inputs in,
PNG bytes or plain dicts out, and :class:`BadRequest` (a status and a message) for bad input."""

from __future__ import annotations

import io
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from ..api import export_best_model
from ..errors import ConfigError
from ..images import denormalize, make_grid
from ..modelfile import load
from ..registry import model_kind
from ..sampling import default_prior
from ..training import METRICS, read_metrics

MAX_SAMPLES = 64
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 25_000_000  # decoding is refused above this, before any pixel is read
MAX_SEED = 2 ** 63 - 1
GRID_COLUMNS = 8


class BadRequest(Exception):
    """Input the page (or anyone) sent that cannot be served: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class LoadedModel:
    """One model named on the command line, with what the page shows about its run."""

    name: str
    model: torch.nn.Module
    path: str
    run: dict = field(default_factory=dict)  # metrics.json beside the model file, when there is one

    @property
    def priors(self) -> list[str]:
        return ["standard"] + (["fitted"] if getattr(self.model, "fitted_prior", None) is not None else [])

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names) or [str(c) for c in range(self.model.config.num_classes)]

    @property
    def can_reconstruct(self) -> bool:
        return callable(getattr(self.model, "reconstruct", None))

    @property
    def can_discriminate(self) -> bool:
        return callable(getattr(self.model, "discriminate", None))

    def summary(self) -> dict:
        """Headline facts and figures for the page (no training history: see :meth:`curves`)."""
        model, saved = self.model, self.model.model_config.get("metrics", {})
        run = self.run
        return {
            "name": self.name, "kind": model.kind, "path": self.path, "conditional": bool(model.conditional),
            "class_names": self.class_names,
            "priors": self.priors, "default_prior": default_prior(model),
            "can_reconstruct": self.can_reconstruct, "can_discriminate": self.can_discriminate,
            "image_size": model.config.image_size, "latent_dim": model.config.latent_dim,
            "best_metric": run.get("best_metric"), "best_epoch": run.get("best_epoch", saved.get("best_epoch")),
            "epochs_completed": run.get("epochs_completed", saved.get("epoch")),
            "finished": run.get("finished"), "wall_time_s": run.get("wall_time_s"),
            "best": _numbers(run.get("best") or saved.get("best") or {}),
            "quality": _numbers(run.get("quality") or {}),
        }

    def curves(self) -> dict:
        """Per-epoch figures of the run: ``{"epochs": [...], "series": {name: {"train": [...], "test": [...]}}}``."""
        history = self.run.get("history") or []
        series: dict[str, dict[str, list]] = {}
        for i, entry in enumerate(history):
            for part in ("train", "test"):
                for key, value in _numbers(entry.get(part) or {}).items():
                    series.setdefault(key, {}).setdefault(part, [None] * len(history))[i] = value
            for key, value in entry.items():
                if key not in ("epoch", "train", "test", "seconds") and _is_number(value):
                    series.setdefault(key, {}).setdefault("schedule", [None] * len(history))[i] = value
        return {"epochs": [entry.get("epoch", i + 1) for i, entry in enumerate(history)], "series": series}


class Explorer:
    """The loaded models and what the page can ask of them; one lock keeps model calls one at a time."""

    def __init__(self, models: list[LoadedModel]):
        self.models = {m.name: m for m in models}
        self.lock = threading.Lock()

    @classmethod
    def load(cls, runs: list[str | os.PathLike], device: torch.device) -> "Explorer":
        """Load each run folder or model file with :func:`cifargen.modelfile.load` (no pickle); a run
        folder that stopped before its end is served from its best checkpoint, as ``eval`` does."""
        loaded, names = [], set()
        for run in runs:
            model = load(export_best_model(run, device) if Path(run).is_dir() else run, device)
            if not model_kind(model.kind).generative:
                raise ConfigError(f"{run} holds a {model.kind}, which does not generate images; pass generator runs")
            folder = Path(model.weights_path).parent
            name = base = folder.resolve().name or model.kind
            counter = 2
            while name in names:
                name, counter = f"{base}-{counter}", counter + 1
            names.add(name)
            loaded.append(LoadedModel(name, model, str(run), read_metrics(folder / METRICS) or {}))
        return cls(loaded)

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            raise BadRequest(404, f"unknown model {name!r}: this server has {', '.join(self.models)}") from None

    # --- the page's requests ----------------------------------------------------------------
    def samples(self, name: str, n: int, seed: int, label: int | None, prior: str | None) -> bytes:
        """A PNG grid of ``n`` samples (all of class ``label``, or every class in turn), ``GRID_COLUMNS`` to a row."""
        entry = self.get(name)
        model, prior = entry.model, self._prior(entry, prior)
        self._check_label(entry, label)
        labels = None
        if model.conditional:
            labels = torch.full((n,), label) if label is not None else torch.arange(n) % model.config.num_classes
        with self.lock, torch.inference_mode():
            images, _ = model.generate(n, labels, generator=torch.Generator().manual_seed(seed), prior=prior)
        return png(make_grid(denormalize(images.float().cpu()), ncols=min(n, GRID_COLUMNS)))

    def interpolation(self, name: str, seed_a: int, seed_b: int, t: float, label: int | None,
                      prior: str | None) -> bytes:
        """A PNG of the image decoded from ``(1 - t) z_a + t z_b``, the codes drawn with ``seed_a`` and ``seed_b``."""
        entry = self.get(name)
        model, prior = entry.model, self._prior(entry, prior)
        self._check_label(entry, label)
        if model.conditional and label is None:
            label = 0
        device = next(model.parameters()).device
        y = torch.tensor([label]) if model.conditional else None
        with self.lock, torch.inference_mode():
            ends = [model.latents(1, y, torch.Generator().manual_seed(s), prior).cpu() for s in (seed_a, seed_b)]
            z = ((1 - t) * ends[0] + t * ends[1]).to(device)
            image = model.decode(z, y.to(device) if y is not None else None)
        return png(denormalize(image.float().cpu())[0])

    def reconstruction(self, name: str, upload: bytes, label: int | None) -> bytes:
        """A PNG of the upload as the model sees it (RGB, resized) beside its reconstruction."""
        entry = self.get(name)
        if not entry.can_reconstruct:
            raise BadRequest(400, f"{name} is a {entry.model.kind}, which cannot reconstruct images; "
                                  "upload to a vae or cvae")
        self._check_label(entry, label)
        if entry.model.conditional and label is None:
            raise BadRequest(400, f"{name} is conditional: give the uploaded image's class")
        x = read_image(upload, entry.model.config.image_size)
        device = next(entry.model.parameters()).device
        y = torch.tensor([label], device=device) if entry.model.conditional else None
        with self.lock, torch.inference_mode():
            recon = entry.model.reconstruct(x.to(device), y).float().cpu()
        return png(make_grid(denormalize(torch.cat([x, recon])), ncols=2))

    def discrimination(self, name: str, upload: bytes) -> dict:
        """The discriminator's P(real) and class probabilities for the upload."""
        entry = self.get(name)
        if not entry.can_discriminate:
            raise BadRequest(400, f"{name} is a {entry.model.kind}, which has no discriminator; upload to an acgan")
        x = read_image(upload, entry.model.config.image_size)
        with self.lock, torch.inference_mode():
            real, classes = entry.model.discriminate(x.to(next(entry.model.parameters()).device))
        probabilities = classes[0].cpu().tolist()
        names = entry.class_names
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return {"real": float(real[0]), "predicted": names[best],
                "classes": [{"name": c, "probability": p} for c, p in zip(names, probabilities)]}

    # --- checks ---------------------------------------------------------------------------
    @staticmethod
    def _prior(entry: LoadedModel, prior: str | None) -> str:
        prior = prior or default_prior(entry.model)
        if prior not in entry.priors:
            raise BadRequest(400, f"prior {prior!r} is not available for {entry.name}: choose {' or '.join(entry.priors)}")
        return prior

    @staticmethod
    def _check_label(entry: LoadedModel, label: int | None) -> None:
        if label is None:
            return
        if not entry.model.conditional:
            raise BadRequest(400, f"{entry.name} is a {entry.model.kind}, which is not conditional: leave out the class")
        classes = entry.model.config.num_classes
        if not 0 <= label < classes:
            raise BadRequest(400, f"class must be between 0 and {classes - 1}, got {label}")


def read_image(data: bytes, size: int) -> torch.Tensor:
    """An uploaded image file of any size and mode as a (1, 3, size, size) float batch in [0, 1]."""
    if not data:
        raise BadRequest(400, "the upload is empty: send an image file (PNG, JPEG, GIF, BMP, WebP...)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadRequest(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2 ** 20} MiB; send a smaller image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise BadRequest(413, f"the image has {image.width}x{image.height} pixels, more than "
                                      f"{MAX_UPLOAD_PIXELS:,}; send a smaller one")
            image = ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except BadRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file makes Pillow raise is the sender's error
        raise BadRequest(400, f"the upload is not an image Pillow can read ({type(exc).__name__}); "
                              "send a PNG, JPEG, GIF, BMP or WebP file") from None
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def png(array) -> bytes:
    """A uint8 (H, W, 3) array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if _is_number(v)} if isinstance(figures, dict) else {}
