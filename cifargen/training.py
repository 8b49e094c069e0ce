"""The one training loop, shared by every model.

A model brings a :class:`~cifargen.recipes.base.Recipe`: its networks, optimizers, one
``train_step`` and an ``evaluate``. The :class:`Trainer` owns everything else: data on the
device, the epoch permutation, device-side accumulation of the step outputs (read back once per
epoch), the non-finite check, per-epoch evaluation, atomic checkpoints, resuming, figures
between epochs and ``metrics.json``. Its ``fit`` reads as the list of those steps.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import BatchLoader, ImageDataset
from .errors import ConfigError, TrainingError
from .modelfile import CONFIG, WEIGHTS, save_model
from .priors import PRIOR_WEIGHTS
from .recipes.base import Recipe, TrainConfig
from .registry import OUTPUT_FILES, model_kind
from .runtime import (all_reduce_, atomic_torch_save, atomic_write_json, device_memory_bytes, distributed_env,
                      init_distributed, is_out_of_memory, keep_freed_memory_for_reuse, physical_cores,
                      remove_leftover_temporaries, resolve_device, resolve_precision, rng_state, seed_everything,
                      set_rng_state)

CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS = "metrics.json"
LAST_MODEL = "last"  # the final epoch's model file, beside the best one
SKIPPED_IMAGES = "skipped_images.txt"  # image files of the data folder that could not be read
# What the loop itself writes; each recipe adds its own figures (Recipe.output_files, all in registry.OUTPUT_FILES).
LOOP_FILES = tuple(re.escape(name) for name in (METRICS, CHECKPOINT, BEST_CHECKPOINT, WEIGHTS, CONFIG, PRIOR_WEIGHTS,
                                                         SKIPPED_IMAGES))
# Training memory per parameter: float32 weights, gradients and Adam's two moments (SGD with
# momentum keeps one). Activations come on top, so a run refused for it could not have trained.
BYTES_PER_PARAMETER = 16


@dataclass
class RunState:
    """What the loop carries from epoch to epoch; ``last.pt`` holds it beside the recipe's state."""

    history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None      # 0-based
    next_epoch: int = 0                # 0-based
    wall_before: float = 0.0           # seconds trained before this process started (resumed runs)
    partial: dict | None = None        # the interrupted epoch's progress, when resuming after Ctrl-C

    def checkpoint(self, recipe: Recipe, loader: BatchLoader, wall: float, partial: dict | None = None) -> dict:
        """The content of ``last.pt`` after the epoch before ``next_epoch`` (and ``partial`` steps)."""
        return {"recipe": recipe.state_dict(), "epoch": self.next_epoch - 1, "history": self.history,
                "best_value": self.best_value, "best_epoch": self.best_epoch, "rng": rng_state(),
                "data_generator": loader.generator.get_state(), "wall_time_s": wall, "partial": partial,
                "config": recipe.config.to_dict()}

    @classmethod
    def restore(cls, path: Path, recipe: Recipe, loader: BatchLoader) -> "RunState":
        """Load ``last.pt`` into ``recipe``, ``loader`` and the RNGs; returns the run state."""
        saved = load_checkpoint(path, recipe.device)
        try:
            recipe.load_state_dict(saved["recipe"])
            loader.generator.set_state(saved["data_generator"])
            set_rng_state(saved["rng"])
            return cls(saved["history"], saved["best_value"], saved["best_epoch"], saved["epoch"] + 1,
                       saved["wall_time_s"], saved.get("partial"))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path} does not fit this configuration ({str(exc).splitlines()[0][:200]}); "
                              "resume with the settings the run was started with") from None


@dataclass
class EpochSums:
    """Device-side sums of a training epoch's step outputs: read back once, at the epoch's end."""

    names: list[str] | None = None
    sums: torch.Tensor | None = None
    count: int = 0
    first_bad_step: torch.Tensor | None = None   # -1 while every step's outputs are finite

    def add(self, step: int, out: dict[str, torch.Tensor], batch: int) -> None:
        values = torch.stack([v.float() for v in out.values()])
        if self.sums is None:
            self.names, self.sums = list(out), torch.zeros_like(values)
        self.sums += values * batch
        self.count += batch
        # Remember the first step whose outputs are not finite, without a host sync.
        bad = ~torch.isfinite(values).all() & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)


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


class Trainer:
    """Runs a recipe epoch by epoch; see :meth:`fit`."""

    def __init__(self, recipe: Recipe, train_set: ImageDataset, test_set: ImageDataset,
                 out_dir: str | os.PathLike, log=None):
        self.recipe, self.config = recipe, recipe.config
        self.train_set, self.test_set = train_set, test_set
        self.out_dir = Path(out_dir)
        self.rank, self.world_size, _ = distributed_env()
        self.is_main = self.rank == 0  # only rank 0 writes files and logs
        default_log = lambda line: tqdm.write(line, file=sys.stderr)  # noqa: E731
        self.log = (log or default_log) if self.is_main else (lambda line: None)
        self.loader = BatchLoader(train_set, self.config.batch_size, recipe.device, shuffle=True,
                                  seed=self.config.seed, rank=self.rank, world_size=self.world_size)
        self.state = RunState()
        self.started = time.perf_counter()
        self.tensorboard = None  # a TensorBoardLog on rank 0 with --tensorboard (start_run)

    def fit(self) -> dict:
        """Train, evaluating after every epoch; returns the final ``metrics.json`` content."""
        self.start_run()
        epoch = self.state.next_epoch
        try:
            with _StopRequest(enabled=self.world_size == 1) as stop:
                for epoch in range(self.state.next_epoch, self.config.epochs):
                    epoch_start = time.perf_counter()
                    logged, sums = self.train_epoch(epoch, stop)
                    train_means = self.reduce_and_check(epoch, sums)
                    test_metrics = self.evaluate(epoch)
                    self.end_epoch(epoch, logged, train_means, test_metrics, time.perf_counter() - epoch_start)
                    if stop.requested:  # Ctrl-C during the epoch's evaluation or figures: last.pt has the epoch
                        self.stop_after_epoch(epoch)
            return self.finish()
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory_error(exc, self.config, self.recipe.device, f"at epoch {epoch + 1}",
                                      self._last_good()) from None
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    # --- the steps of fit -----------------------------------------------------------------
    def start_run(self) -> None:
        """Resume from ``last.pt``, or clear what an earlier run left when overwriting."""
        if self.config.resume:
            self.state = RunState.restore(self.out_dir / CHECKPOINT, self.recipe, self.loader)
            partial = self.state.partial
            where = f"step {partial['next_step'] + 1} of " if partial else ""
            self.log(f"resuming {self.out_dir} at {where}epoch {self.state.next_epoch + 1}")
        elif self.config.overwrite and self.is_main:
            remove_run_outputs(self.out_dir, OUTPUT_FILES)  # the old run may be of another kind
        if self.is_main:
            write_skipped_list(self.out_dir, self.train_set, self.test_set, self.log)
            for path in remove_leftover_temporaries(self.out_dir, (WEIGHTS, PRIOR_WEIGHTS)):
                self.log(f"removed {path.name}, left by a write that was killed midway")
        if self.is_main and self.config.tensorboard is not None:
            from .tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.config.tensorboard, self.state.history)
            if self.tensorboard.backfilled:
                self.log(f"TensorBoard: wrote the figures of epochs {self.tensorboard.backfilled} that "
                         f"{self.config.tensorboard} lacked (their images were not kept)")
        if self.world_size > 1:  # identical weights, but each rank draws its own noise
            torch.manual_seed((self.config.seed * 7919 + self.rank * 104729 + self.state.next_epoch) % 2 ** 63)
        self.started = time.perf_counter() - self.state.wall_before

    def train_epoch(self, epoch: int, stop: _StopRequest) -> tuple[dict, EpochSums]:
        """One pass over the training split (the rest of it, when resuming mid-epoch)."""
        logged = self.recipe.start_epoch(epoch)
        self.recipe.train()
        partial, self.state.partial = self.state.partial, None
        if partial is not None:  # re-draw the interrupted epoch's order and carry on after its last step
            self.loader.generator.set_state(partial["generator_before_epoch"])
            first_step = partial["next_step"]
            sums = EpochSums(partial["names"], partial["sums"], partial["count"], partial["first_bad_step"])
            logged = partial.get("logged", logged)  # what the epoch logged when it started
        else:
            first_step = 0
            sums = EpochSums(first_bad_step=torch.full((), -1, dtype=torch.long, device=self.recipe.device))
        generator_before_epoch = self.loader.generator.get_state()
        bar = tqdm(self.loader.batches(first_step), desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                   total=len(self.loader), initial=first_step, unit="batch", file=sys.stderr,
                   disable=not (self.config.progress and self.is_main))
        for step, (x, y) in enumerate(bar, start=first_step):
            sums.add(step, self.recipe.train_step(x, y), x.shape[0])
            self.recipe.after_step()
            if stop.requested:
                bar.close()
                self.save_interrupted(epoch, step, sums, generator_before_epoch, logged)
        bar.close()
        return {**logged, "lr": self.recipe.learning_rate()}, sums

    def save_interrupted(self, epoch: int, step: int, sums: EpochSums, generator_before_epoch, logged) -> None:
        """Ctrl-C: save ``last.pt`` with the epoch's progress and stop."""
        self.save_checkpoint({"next_step": step + 1, "sums": sums.sums, "count": sums.count, "names": sums.names,
                              "first_bad_step": sums.first_bad_step, "generator_before_epoch": generator_before_epoch,
                              "logged": logged})
        self.log(f"interrupted at epoch {epoch + 1}, step {step + 1}; {self._saved_and_resume()}")
        raise KeyboardInterrupt

    def stop_after_epoch(self, epoch: int) -> None:
        """Ctrl-C between steps: ``last.pt`` already holds the whole epoch; stop before the next one
        (or, after the last epoch, before the final outputs)."""
        self.log(f"interrupted after epoch {epoch + 1}; {self._saved_and_resume()}")
        raise KeyboardInterrupt

    def _saved_and_resume(self) -> str:
        return (f"saved {self.out_dir / CHECKPOINT}. Continue with: {model_kind(self.config.model).command()} "
                f"--resume {self.out_dir}")

    def reduce_and_check(self, epoch: int, sums: EpochSums) -> dict[str, float]:
        """Epoch means over all ranks; stop the run if any step's outputs were not finite."""
        first_bad_step = sums.first_bad_step
        if self.world_size > 1:
            all_reduce_(sums.sums)
            sums.count = int(all_reduce_(torch.tensor(sums.count, device=self.recipe.device)))
            # The earliest bad step over all ranks (-1, none, must not win the minimum).
            never = torch.full_like(first_bad_step, len(self.loader))
            first_bad_step = all_reduce_(torch.where(first_bad_step < 0, never, first_bad_step), op="min")
            first_bad_step = torch.where(first_bad_step == len(self.loader), -1, first_bad_step)
        bad_step = int(first_bad_step)  # one host sync per epoch
        if bad_step >= 0:
            raise TrainingError(f"the training loss became non-finite at epoch {epoch + 1}, step {bad_step + 1}; "
                                + self._last_good())
        return dict(zip(sums.names, (sums.sums / sums.count).tolist()))

    def evaluate(self, epoch: int) -> dict[str, float]:
        """The recipe's test figures after ``epoch``; stops the run if one is not finite."""
        self.recipe.end_epoch(epoch)
        self.recipe.eval()
        test_metrics = self.recipe.evaluate(self.test_set)
        if not all(math.isfinite(v) for v in test_metrics.values()):
            raise TrainingError(f"test figures became non-finite after epoch {epoch + 1} ({test_metrics}); "
                                + self._last_good())
        return test_metrics

    def end_epoch(self, epoch: int, logged: dict, train_means: dict, test_metrics: dict, seconds: float) -> None:
        """Record the epoch; write ``best.pt`` if it improved, ``last.pt``, figures and ``metrics.json``."""
        state = self.state
        state.history.append({"epoch": epoch + 1, **logged, "train": train_means, "test": test_metrics,
                              "seconds": round(seconds, 2)})
        state.next_epoch = epoch + 1
        improved = self.recipe.is_better(test_metrics[self.recipe.best_metric], state.best_value)
        if improved:
            state.best_value, state.best_epoch = test_metrics[self.recipe.best_metric], epoch
            if self.is_main:
                atomic_torch_save({"models": self.recipe.model_state(), "epoch": epoch + 1, "test": test_metrics,
                                   "config": self.config.to_dict(), "data": self.train_set.identity()},
                                  self.out_dir / BEST_CHECKPOINT)
        images = self.recipe.epoch_images(epoch, self.test_set) if self.is_main else {}
        if self.tensorboard is not None:  # before last.pt: every epoch a checkpoint holds is in the log
            self.tensorboard.log_epoch(state.history[-1], images)
        self.save_checkpoint()
        if self.is_main:
            self.recipe.epoch_figures(epoch, self.test_set, self.out_dir, images)
            atomic_write_json(self.metrics(finished=False), self.out_dir / METRICS)
        self.log(_summary_line(epoch, self.config.epochs, logged, train_means, test_metrics, seconds, improved))

    def finish(self) -> dict:
        """Write the final epoch's model to ``last/``; load the best weights; write the recipe's final
        figures, the best model file and ``metrics.json``."""
        metrics = self.metrics(finished=True)
        if self.is_main:
            self.save_model_file(self.out_dir / LAST_MODEL, metrics, epoch=len(self.state.history))
            best = load_checkpoint(self.out_dir / BEST_CHECKPOINT, self.recipe.device)
            self.recipe.load_model_state(best["models"])
            self.recipe.eval()
            metrics.update(self.recipe.final_outputs(metrics, self.train_set, self.test_set, self.out_dir))
            self.save_model_file(self.out_dir, metrics, epoch=metrics["best_epoch"])
            atomic_write_json(metrics, self.out_dir / METRICS)
            if self.tensorboard is not None:
                figures = {f"best_{k}": v for k, v in metrics["best"].items()}
                self.tensorboard.log_final(self.config.to_dict(), {**figures, "best_epoch": metrics["best_epoch"],
                                                                   "wall_time_s": metrics["wall_time_s"]},
                                           step=len(self.state.history))
        return metrics

    def save_model_file(self, folder: Path, metrics: dict, epoch: int) -> None:
        """The recipe's network as it is now, as ``model.safetensors`` and ``config.json`` in ``folder``."""
        save_model(self.recipe.export_model(), folder, self.recipe.class_names, training=self.config.to_dict(),
                   metrics={"epoch": epoch, "best_epoch": metrics["best_epoch"], "test": self.state.history[epoch - 1]["test"],
                            "best": metrics["best"], "precision": metrics["precision"], "device": metrics["device"],
                            "data": self.train_set.identity()})

    # --- helpers --------------------------------------------------------------------------
    def wall(self) -> float:
        return time.perf_counter() - self.started

    def save_checkpoint(self, partial: dict | None = None) -> None:
        if self.is_main:
            atomic_torch_save(self.state.checkpoint(self.recipe, self.loader, self.wall(), partial),
                              self.out_dir / CHECKPOINT)

    def _last_good(self) -> str:
        done = len(self.state.history)
        if not done:
            return "no epoch had completed, so nothing was saved"
        return (f"the last good checkpoint is {self.out_dir / CHECKPOINT} (epoch {done}); "
                f"the best model so far is {self.out_dir / BEST_CHECKPOINT}")

    def metrics(self, finished: bool) -> dict:
        """The content of ``metrics.json``."""
        state, recipe, config = self.state, self.recipe, self.config
        best_entry = state.history[state.best_epoch] if state.best_epoch is not None else None
        return {
            "model": config.model,
            "finished": finished,
            "epochs_completed": len(state.history),
            "best_epoch": state.best_epoch + 1 if state.best_epoch is not None else None,
            "best_metric": recipe.best_metric,
            "best": best_entry["test"] if best_entry else None,
            "last": state.history[-1]["test"] if state.history else None,
            "history": state.history,
            "config": config.to_dict(),
            "data": describe_splits(self.train_set, self.test_set),
            "seed": config.seed,
            "device": str(recipe.device),
            "device_name": device_name(recipe.device),
            "precision": str(recipe.autocast_dtype or torch.float32).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "world_size": self.world_size,
            "torch_version": torch.__version__,
            "wall_time_s": round(self.wall(), 2),
        }


def fit(recipe: Recipe, train_set: ImageDataset, test_set: ImageDataset, out_dir: str | os.PathLike,
        log=None) -> dict:
    """Train ``recipe`` on ``train_set``, evaluating on ``test_set`` after every epoch.

    Writes ``last.pt`` (resumable), ``best.pt`` (best weights by ``recipe.best_metric``),
    ``metrics.json``, the model file and the recipe's figures into ``out_dir``. Returns the metrics.
    """
    return Trainer(recipe, train_set, test_set, out_dir, log).fit()


def _summary_line(epoch: int, epochs: int, logged: dict, train: dict, test: dict, seconds: float, best: bool) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}"]
    parts += [f"{k} {v:.3g}" for k, v in logged.items()]
    parts += [f"train {k} {v:.4f}" for k, v in train.items()]
    parts += [f"test {k} {v:.4f}" for k, v in test.items()]
    parts.append(f"{seconds:.1f}s" + (" *best*" if best else ""))
    return " | ".join(parts)


def describe_splits(train_set: ImageDataset, test_set: ImageDataset) -> dict:
    """The data set's identity and how each split was made, for ``metrics.json``."""
    def split(dataset: ImageDataset) -> dict:
        info = {k: v for k, v in dataset.info.items() if k != "skipped"}
        return {"images": len(dataset), **info, "skipped_files": len(dataset.info.get("skipped", []))}
    return {**train_set.identity(), "train": split(train_set), "test": split(test_set)}


def write_skipped_list(out: Path, train_set: ImageDataset, test_set: ImageDataset, log) -> None:
    """List the data folder's unreadable files in the run folder (``skipped_images.txt``), and say how many."""
    lines = [f"{split.info.get('source', '')}/{file}\t{reason}" for split in (train_set, test_set)
             for file, reason in split.info.get("skipped", [])]
    if not lines:
        return
    (out / SKIPPED_IMAGES).write_text("\n".join(lines) + "\n")
    log(f"skipped {len(lines)} image file(s) that could not be read; the list is in {out / SKIPPED_IMAGES}")


def out_of_memory_error(exc: BaseException, config: TrainConfig, device, where: str, saved: str = "") -> TrainingError:
    """The one-line error for an allocation failure ``where`` in a run: what to reduce, and what was ``saved``."""
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return TrainingError(f"out of memory on {device} {where} ({reason}); reduce --batch-size (now {config.batch_size}) "
                         f"or the network ({_sizes(config)}) and start again" + (f"; {saved}" if saved else ""))


def _sizes(config: TrainConfig) -> str:
    """``arch.width=64, arch.latent_dim=512``: the settings that make a network large."""
    arch = config.arch.to_dict() if hasattr(config, "arch") else {}
    return ", ".join(f"arch.{k}={arch[k]}" for k in ("width", "d_width", "latent_dim") if k in arch)


def check_model_fits(config: TrainConfig, model_class, device: torch.device) -> int:
    """Refuse, before anything is allocated, a network whose training cannot fit in ``device``'s memory.

    The network is built on the meta device to count its parameters; training needs at least
    ``BYTES_PER_PARAMETER`` bytes per parameter. Returns the parameter count.
    """
    try:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in model_class(config.arch_for()).parameters())
    except (RuntimeError, ValueError, OverflowError) as exc:  # sizes torch cannot even describe
        raise ConfigError(f"cannot build the {config.model} with {_sizes(config)} ({str(exc).splitlines()[0][:160]}); "
                          "reduce them (--width, --latent-dim or --set arch.KEY=VALUE)") from None
    needed, available = parameters * BYTES_PER_PARAMETER, device_memory_bytes(device)
    if available is not None and needed > available:
        raise ConfigError(f"the {config.model} with {_sizes(config)} has {parameters:,} parameters: training needs at "
                          f"least {needed / 2 ** 30:,.1f} GiB ({BYTES_PER_PARAMETER} bytes each for weights, gradients "
                          f"and Adam's moments) but {device} has {available / 2 ** 30:,.1f} GiB; reduce them "
                          "(--width, --latent-dim or --set arch.KEY=VALUE)")
    return parameters


def make_run_dir(out: Path) -> None:
    """Create the run folder if needed and check that it is writable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {out} ({exc.strerror or exc}); choose a writable folder") from None


class RunFolderLock:
    """One process at a time per run folder: ``.lock`` records the holder's PID, host and start.

    A second run into a locked folder is refused naming the holder. A lock left by a process that
    no longer runs on this host (killed, crashed) is stale and taken over.
    """

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def __enter__(self) -> "RunFolderLock":
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._is_stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(f"{self.path.parent} is in use by process {holder.get('pid')} on {holder.get('host')} "
                                  f"(since {holder.get('started')}); wait for it to end or use another run folder "
                                  f"(--out when training; if no such process runs, delete {self.path})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
            return self
        raise ConfigError(f"cannot take the lock {self.path}; another process keeps taking it: use another run folder")

    def __exit__(self, *exc) -> None:
        if self._holder() == self.record:
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") != self.record["host"]:
            return False  # another machine's process: cannot tell, so it holds
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False


def read_metrics(path: Path) -> dict | None:
    """The content of a run's ``metrics.json``; None when it is missing, unreadable or not a JSON object."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an existing run unless asked to.

    Nothing is deleted here: with ``overwrite`` the old run's files are removed only once the new
    run has loaded its data and built its model (:meth:`Trainer.start_run`).
    """
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"nothing to resume: {out / CHECKPOINT} does not exist; start without --resume")
        return
    if overwrite:
        return
    metrics = out / METRICS
    if metrics.is_file() or (out / CHECKPOINT).is_file():
        finished = (read_metrics(metrics) or {}).get("finished", False)
        state = "a finished run" if finished else "an unfinished run (continue it with --resume)"
        raise ConfigError(f"{out} already holds {state}; pass --overwrite to replace it or --out to choose another folder")


def remove_run_outputs(out: Path, recipe_files: tuple[str, ...]) -> None:
    """Delete what an earlier run wrote in ``out``: only the loop's and the recipe's file names."""
    patterns = [re.compile(p) for p in LOOP_FILES + tuple(recipe_files)]
    for folder in (out, out / LAST_MODEL):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and any(p.fullmatch(path.name) for p in patterns):
                path.unlink(missing_ok=True)  # another rank may have removed it already
    if (out / LAST_MODEL).is_dir() and not any((out / LAST_MODEL).iterdir()):
        (out / LAST_MODEL).rmdir()


def load_checkpoint(path: Path, device) -> dict:
    """Load a cifargen checkpoint without running pickled code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot load checkpoint {path} ({reason}); it is damaged or not a cifargen checkpoint: "
                          "start a new run with another --out (the run's best model, if any, stays usable)") from None


def device_name(device: torch.device) -> str:
    """A readable name of ``device`` for ``metrics.json``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
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
