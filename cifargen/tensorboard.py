"""TensorBoard logs of a training run (``cifargen train MODEL --tensorboard [DIR]``).

Each epoch is one global step, numbered as in ``metrics.json`` (1, 2, ...): every number of the
epoch's ``history`` entry as a scalar (``train/<name>``, ``test/<name>``, ``epoch/<name>`` for the
learning rate, KL weight and seconds), the recipe's epoch image grids, and at the end the run's
configuration with its best test figures (the HParams view).

TensorBoard is an optional extra: :func:`require_tensorboard` fails at once, before any data is
loaded, when it is missing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .configs import flatten
from .errors import ConfigError
from .images import denormalize, make_grid

INSTALL_HINT = 'pip install "cifargen[tensorboard]"'
SECONDS_TAG = "epoch/seconds"  # every epoch has it: the log holds an epoch when it holds this scalar at its step


def require_tensorboard() -> None:
    """Raise a one-line ``ConfigError`` naming the install command when TensorBoard is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None


def epoch_scalars(entry: dict) -> dict[str, float]:
    """The scalars of one ``history`` entry: ``{"train/loss": ..., "test/rec": ..., "epoch/lr": ...}``."""
    scalars = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            scalars.update({f"{key}/{name}": float(v) for name, v in value.items() if _is_number(v)})
        elif key != "epoch" and _is_number(value):
            scalars[f"epoch/{key}"] = float(value)
    return scalars


def grid_image(rows: torch.Tensor) -> np.ndarray:
    """A (rows, cols, C, H, W) batch of images in [0, 1] as one uint8 (H', W', C) grid, row by row."""
    return make_grid(denormalize(rows.flatten(0, 1)), ncols=rows.shape[1])


def logged_epochs(log_dir: str | os.PathLike) -> set[int]:
    """The epochs (global steps) whose scalars ``log_dir`` holds, as TensorBoard reads it (purged steps left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return set()
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    events.Reload()
    if SECONDS_TAG not in events.Tags().get("scalars", []):
        return set()
    return {event.step for event in events.Scalars(SECONDS_TAG)}


class TensorBoardLog:
    """One run's TensorBoard log; the training loop calls it between epochs only (rank 0).

    ``history`` is the run's history so far (empty for a new run). Steps after it are purged, so a
    run resumed from its last checkpoint rewrites the epochs it repeats instead of doubling them,
    and a new run into an old log hides the old steps. Epochs of ``history`` that the log lacks
    (the run started without ``--tensorboard``) get their scalars; their images are gone.
    """

    def __init__(self, log_dir: str | os.PathLike, history: list[dict] = ()):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        present = logged_epochs(self.log_dir) if history else set()
        try:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=len(history) + 1)
        except OSError as exc:
            raise ConfigError(f"cannot write the TensorBoard log to {self.log_dir} ({exc.strerror or exc}); "
                              "choose another --tensorboard folder") from None
        self.backfilled = [entry["epoch"] for entry in history if entry["epoch"] not in present]
        for entry in history:
            if entry["epoch"] not in present:
                self._scalars(entry)
        self.writer.flush()

    def log_epoch(self, entry: dict, images: dict[str, torch.Tensor]) -> None:
        """Write one ``history`` entry and the epoch's image grids (name -> (rows, cols, C, H, W) in [0, 1])."""
        self._scalars(entry)
        for name, rows in images.items():
            self.writer.add_image(f"images/{name}", grid_image(rows), entry["epoch"], dataformats="HWC")
        self.writer.flush()

    def log_final(self, config: dict, figures: dict, step: int) -> None:
        """The configuration as hyperparameters with the final ``figures`` (name -> number) as their metrics."""
        from torch.utils.tensorboard.summary import hparams

        hparam_dict = {key: _hparam_value(value) for key, value in flatten(config).items()}
        metric_dict = {f"hparams/{name}": float(value) for name, value in figures.items() if _is_number(value)}
        for summary in hparams(hparam_dict, metric_dict):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in metric_dict.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _scalars(self, entry: dict) -> None:
        for tag, value in epoch_scalars(entry).items():
            self.writer.add_scalar(tag, value, entry["epoch"])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hparam_value(value):
    """What the HParams view takes (bool, int, float, str); anything else as its text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)
