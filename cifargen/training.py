"""The one training loop, shared by every model.

A model brings a :class:`Recipe`: its networks, optimizers, one ``train_step`` and an
``evaluate``. The loop owns everything else: data on the device, the epoch permutation,
device-side accumulation of the step outputs (read back once per epoch), the non-finite check,
per-epoch evaluation, atomic checkpoints, resuming, figures between epochs and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data import BatchLoader, ImageDataset, default_data_dir
from .errors import ConfigError, TrainingError
from .runtime import (all_reduce_, atomic_torch_save, atomic_write_json, distributed_env, init_distributed,
                      keep_freed_memory_for_reuse, physical_cores, resolve_device, resolve_precision, rng_state,
                      seed_everything, set_rng_state)

CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS = "metrics.json"


@dataclass
class TrainConfig:
    """Settings every model shares. Model recipes extend it with their own fields and defaults."""

    model: str = "vae"
    epochs: int = 60
    batch_size: int = 256          # per process: under torchrun the global batch is this times the world size
    lr: float = 5e-4
    seed: int = 0
    device: str = "auto"
    data_dir: str = field(default_factory=default_data_dir)
    out: str | None = None         # run folder; defaults to visualize/<model>
    limit_train: int | None = None
    limit_test: int | None = None
    precision: str = "auto"        # auto: bf16 autocast where the hardware has it, else fp32
    compile: bool = False
    threads: int | None = None     # CPU threads; default: the physical cores
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    quality: bool = True           # generators: sample-quality figures in metrics.json when a reference classifier exists

    def validate(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        for name in ("limit_train", "limit_test", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Recipe:
    """What a model brings to the loop. Subclasses set ``best_metric``/``best_mode`` and implement
    ``train_step`` and ``evaluate``; the rest has sensible defaults."""

    best_metric: str = "loss"
    best_mode: str = "min"  # or "max"

    def __init__(self, config: TrainConfig, class_names: tuple[str, ...], device: torch.device,
                 autocast_dtype: torch.dtype | None, steps_per_epoch: int | None = None):
        self.config = config
        self.steps_per_epoch = steps_per_epoch  # per process; for schedules that run per step
        self.class_names = class_names
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}       # stepped after every epoch
        self.step_schedulers: dict[str, Any] = {}  # stepped after every training step (warm-ups)

    def wrap(self, module: nn.Module, broadcast_buffers: bool = True) -> nn.Module:
        """The module the step should call: DDP-wrapped under torchrun, compiled with ``--compile``.

        Checkpoints and evaluation use the plain module, which shares its parameters.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=broadcast_buffers)
        return torch.compile(module) if self.config.compile else module

    # --- called by the loop -------------------------------------------------------------
    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Prepare epoch ``epoch`` (0-based); return values to log for it (lr, KL weight...)."""
        return {}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step; returns batch means as detached device tensors (never ``.item()``)."""
        raise NotImplementedError

    def after_step(self) -> None:
        for scheduler in self.step_schedulers.values():
            scheduler.step()

    def end_epoch(self, epoch: int) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def evaluate(self, test_set: ImageDataset) -> dict[str, float]:
        raise NotImplementedError

    def epoch_figures(self, epoch: int, test_set: ImageDataset, out_dir: Path) -> None:
        """Figures after epoch ``epoch`` (0-based); runs between epochs, never per step."""

    def final_outputs(self, metrics: dict, test_set: ImageDataset, out_dir: Path) -> dict:
        """Figures and extra figures after training, with the best weights loaded."""
        return {}

    def export_model(self) -> nn.Module:
        """The trained network to write as ``model.safetensors`` (it has ``kind`` and ``config``)."""
        raise NotImplementedError

    # --- state --------------------------------------------------------------------------
    def model_state(self) -> dict:
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_model_state(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])

    def state_dict(self) -> dict:
        return {
            "models": self.model_state(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "step_schedulers": {k: v.state_dict() for k, v in self.step_schedulers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.load_model_state(state["models"])
        for k, v in self.optimizers.items():
            v.load_state_dict(state["optimizers"][k])
        for k, v in self.schedulers.items():
            v.load_state_dict(state["schedulers"][k])
        for k, v in self.step_schedulers.items():
            v.load_state_dict(state["step_schedulers"][k])

    def train(self) -> None:
        for module in self.modules.values():
            module.train()

    def eval(self) -> None:
        for module in self.modules.values():
            module.eval()

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if self.best_mode == "min" else value > best


class _StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step (a second one aborts).

    Under torchrun the ranks could stop after different steps, so there Ctrl-C keeps its default
    behaviour and a resumed run restarts the interrupted epoch from the last complete one.
    """

    def __init__(self, enabled: bool = True):
        self.requested = False
        self.enabled = enabled
        self._previous = None

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread (a notebook worker, say): keep default handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Create the run folder; refuse to clobber an existing run unless asked to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {out} ({exc.strerror or exc}); choose a writable folder") from None
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"nothing to resume: {out / CHECKPOINT} does not exist; start without --resume")
        return
    if overwrite:
        _remove_outputs(out)
        return
    metrics = out / METRICS
    if metrics.is_file() or (out / CHECKPOINT).is_file():
        finished = False
        try:
            finished = json.loads(metrics.read_text()).get("finished", False)
        except (OSError, ValueError):
            pass
        state = "a finished run" if finished else "an unfinished run (continue it with --resume)"
        raise ConfigError(f"{out} already holds {state}; pass --overwrite to replace it or --out to choose another folder")


_OUTPUT_FILES = (METRICS, CHECKPOINT, BEST_CHECKPOINT, "model.safetensors", "config.json", "losses.png",
                 "total_loss.png", "random.png", "loss.png", "accuracy.png", "confusion.png")


def _remove_outputs(out: Path) -> None:
    """Delete what an earlier run wrote in ``out`` (only cifargen's own file names)."""
    import re

    for path in out.iterdir():
        if path.name in _OUTPUT_FILES or re.fullmatch(r"E\d+\.png", path.name):
            path.unlink(missing_ok=True)  # another rank may have removed it already


def _summary_line(epoch: int, epochs: int, logged: dict, train: dict, test: dict, seconds: float, best: bool) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}"]
    parts += [f"{k} {v:.3g}" for k, v in logged.items()]
    parts += [f"train {k} {v:.4f}" for k, v in train.items()]
    parts += [f"test {k} {v:.4f}" for k, v in test.items()]
    parts.append(f"{seconds:.1f}s" + (" *best*" if best else ""))
    return " | ".join(parts)


def fit(recipe: Recipe, train_set: ImageDataset, test_set: ImageDataset, out_dir: str | os.PathLike,
        log=None) -> dict:
    """Train ``recipe`` on ``train_set``, evaluating on ``test_set`` after every epoch.

    Writes ``last.pt`` (resumable), ``best.pt`` (best weights by ``recipe.best_metric``),
    ``metrics.json`` and the recipe's figures into ``out_dir``. Returns the metrics dict.
    """
    from tqdm.auto import tqdm

    config = recipe.config
    out_dir = Path(out_dir)
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    rank, world_size, _ = distributed_env()
    is_main = rank == 0  # only rank 0 writes files and logs
    if not is_main:
        log = lambda line: None  # noqa: E731
    loader = BatchLoader(train_set, config.batch_size, recipe.device, shuffle=True, seed=config.seed,
                         rank=rank, world_size=world_size)
    history: list[dict] = []
    best_value, best_epoch, start_epoch = None, None, 0
    wall_before = 0.0

    partial = None  # the interrupted epoch's progress, when resuming after Ctrl-C
    if config.resume:
        state = load_checkpoint(out_dir / CHECKPOINT, recipe.device)
        try:
            recipe.load_state_dict(state["recipe"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"{out_dir / CHECKPOINT} does not fit this configuration ({str(exc).splitlines()[0][:200]}); "
                              "resume with the settings the run was started with") from None
        loader.generator.set_state(state["data_generator"])
        set_rng_state(state["rng"])
        history, best_value, best_epoch = state["history"], state["best_value"], state["best_epoch"]
        start_epoch, wall_before, partial = state["epoch"] + 1, state["wall_time_s"], state.get("partial")
        where = f"epoch {start_epoch + 1}, step {partial['next_step'] + 1}" if partial else f"epoch {start_epoch + 1}"
        log(f"resuming {out_dir} at {where}")

    def save_checkpoint(last_complete_epoch: int, wall: float, partial_epoch: dict | None = None) -> None:
        if not is_main:
            return
        atomic_torch_save({
            "recipe": recipe.state_dict(), "epoch": last_complete_epoch, "history": history, "best_value": best_value,
            "best_epoch": best_epoch, "rng": rng_state(), "data_generator": loader.generator.get_state(),
            "wall_time_s": wall, "partial": partial_epoch, "config": config.to_dict(),
        }, out_dir / CHECKPOINT)

    def metrics_dict(finished: bool, wall: float) -> dict:
        best_entry = history[best_epoch] if best_epoch is not None else None
        return {
            "model": config.model,
            "finished": finished,
            "epochs_completed": len(history),
            "best_epoch": best_epoch + 1 if best_epoch is not None else None,
            "best_metric": recipe.best_metric,
            "best": best_entry["test"] if best_entry else None,
            "last": history[-1]["test"] if history else None,
            "history": history,
            "config": config.to_dict(),
            "seed": config.seed,
            "device": str(recipe.device),
            "device_name": device_name(recipe.device),
            "precision": str(recipe.autocast_dtype or torch.float32).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "world_size": world_size,
            "torch_version": torch.__version__,
            "wall_time_s": round(wall, 2),
        }

    if world_size > 1:  # identical weights, but each rank draws its own noise
        torch.manual_seed((config.seed * 7919 + rank * 104729 + start_epoch) % 2 ** 63)
    started = time.perf_counter() - wall_before
    with _StopRequest(enabled=world_size == 1) as stop:
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            logged = recipe.start_epoch(epoch)
            recipe.train()
            if partial is not None:  # re-draw the interrupted epoch's order and carry on after its last step
                loader.generator.set_state(partial["generator_before_epoch"])
                first_step, sums, count, names = partial["next_step"], partial["sums"], partial["count"], partial["names"]
                first_bad_step = partial["first_bad_step"]
                # What the epoch logged when it started (a per-step warm-up has moved the lr since).
                logged = partial.get("logged", logged)
                partial = None
            else:
                first_step, sums, count, names = 0, None, 0, None
                first_bad_step = torch.full((), -1, dtype=torch.long, device=recipe.device)
            generator_before_epoch = loader.generator.get_state()
            bar = tqdm(loader.batches(first_step), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                       total=len(loader), initial=first_step, disable=not (config.progress and is_main), unit="batch",
                       file=sys.stderr)
            for step, (x, y) in enumerate(bar, start=first_step):
                out = recipe.train_step(x, y)
                recipe.after_step()
                values = torch.stack([v.float() for v in out.values()])
                if sums is None:
                    names, sums = list(out), torch.zeros_like(values)
                sums += values * x.shape[0]
                count += x.shape[0]
                # Remember the first step whose loss is not finite, without a host sync.
                bad = ~torch.isfinite(values).all() & (first_bad_step < 0)
                first_bad_step = torch.where(bad, torch.full_like(first_bad_step, step), first_bad_step)
                if stop.requested:
                    save_checkpoint(epoch - 1, time.perf_counter() - started, {
                        "next_step": step + 1, "sums": sums, "count": count, "names": names,
                        "first_bad_step": first_bad_step, "generator_before_epoch": generator_before_epoch,
                        "logged": logged})
                    bar.close()
                    log(f"interrupted at epoch {epoch + 1}, step {step + 1}; saved {out_dir / CHECKPOINT}. "
                        f"Continue with: cifargen train {config.model} --resume {out_dir}")
                    raise KeyboardInterrupt
            bar.close()
            if world_size > 1:  # epoch figures over all ranks' shards
                all_reduce_(sums)
                count = int(all_reduce_(torch.tensor(count, device=recipe.device)))
                # The earliest bad step over all ranks (-1, none, must not win the minimum).
                never = torch.full_like(first_bad_step, len(loader))
                first_bad_step = all_reduce_(torch.where(first_bad_step < 0, never, first_bad_step), op="min")
                first_bad_step = torch.where(first_bad_step == len(loader), -1, first_bad_step)
            bad_step = int(first_bad_step)  # one host sync per epoch
            if bad_step >= 0:
                last_good = out_dir / CHECKPOINT if history else None
                raise TrainingError(
                    f"loss became non-finite at epoch {epoch + 1}, step {bad_step + 1}; "
                    + (f"the last good checkpoint is {last_good} (epoch {len(history)}); "
                       if last_good else "no epoch had completed; ")
                    + "start again with a lower --lr (add --overwrite)")
            train_means = dict(zip(names, (sums / count).tolist()))
            recipe.end_epoch(epoch)
            recipe.eval()
            test_metrics = recipe.evaluate(test_set)
            if not all(math.isfinite(v) for v in test_metrics.values()):
                raise TrainingError(
                    f"test figures became non-finite after epoch {epoch + 1} ({test_metrics}); "
                    + (f"the last good checkpoint is {out_dir / CHECKPOINT} (epoch {len(history)}); " if history else "")
                    + "start again with a lower --lr (add --overwrite)")
            seconds = time.perf_counter() - epoch_start
            history.append({"epoch": epoch + 1, **logged, "train": train_means, "test": test_metrics,
                            "seconds": round(seconds, 2)})
            value = test_metrics[recipe.best_metric]
            improved = recipe.is_better(value, best_value)
            if improved:
                best_value, best_epoch = value, epoch
            if improved and is_main:
                atomic_torch_save({"models": recipe.model_state(), "epoch": epoch + 1, "test": test_metrics,
                                   "config": config.to_dict()}, out_dir / BEST_CHECKPOINT)
            wall = time.perf_counter() - started
            save_checkpoint(epoch, wall)
            if is_main:
                recipe.epoch_figures(epoch, test_set, out_dir)
                atomic_write_json(metrics_dict(False, wall), out_dir / METRICS)
            log(_summary_line(epoch, config.epochs, logged, train_means, test_metrics, seconds, improved))

    wall = time.perf_counter() - started
    metrics = metrics_dict(True, wall)
    if is_main:
        best = load_checkpoint(out_dir / BEST_CHECKPOINT, recipe.device)
        recipe.load_model_state(best["models"])
        recipe.eval()
        metrics.update(recipe.final_outputs(metrics, test_set, out_dir))
        from .modelfile import save_model

        save_model(recipe.export_model(), out_dir, recipe.class_names, training=config.to_dict(),
                   metrics={"best_epoch": metrics["best_epoch"], "best": metrics["best"],
                            "precision": metrics["precision"], "device": metrics["device"]})
        atomic_write_json(metrics, out_dir / METRICS)
    return metrics


def load_checkpoint(path: Path, device) -> dict:
    """Load a cifargen checkpoint without running pickled code (``weights_only=True``)."""
    import pickle

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"cannot load checkpoint {path} ({str(exc).splitlines()[0][:200]}); "
                          "it is damaged or not a cifargen checkpoint: start the run again with --overwrite") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        return f"{platform.processor() or platform.machine()} ({physical_cores()} cores)"
    return device.type


def setup_runtime(config: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """Validate ``config``, pick the device, threads and precision, and seed every RNG."""
    config.validate()
    device = resolve_device(config.device)
    rank, world_size, _ = distributed_env()
    if world_size > 1:
        device = init_distributed(device)
    torch.set_num_threads(config.threads or max(1, physical_cores() // (world_size if device.type == "cpu" else 1)))
    dtype = resolve_precision(config.precision, device)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(config.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    return device, dtype
