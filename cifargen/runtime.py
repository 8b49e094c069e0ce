"""Where and how computation runs: device choice, threads, precision, seeding, atomic files."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, TrainingError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist or a ConfigError says so."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                              "use one of those or auto")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    # torch would quietly ignore the index of a CPU or of the one MPS device: refuse it instead.
    if device.type in ("cpu", "mps") and device.index not in (None, 0):
        raise ConfigError(f"--device {name}: there is no {device.type} device {device.index}; use --device {device.type}")
    return device


CACHE_ENV = "CIFARGEN_CACHE"


def cache_root() -> Path:
    """cifargen's cache folder: ``$CIFARGEN_CACHE``, else ``$XDG_CACHE_HOME/cifargen`` or ``~/.cache/cifargen``."""
    cache = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifargen"
    return Path(cache)


def device_memory_bytes(device: torch.device) -> int | None:
    """All the memory a run on ``device`` could use: the GPU's total memory for CUDA, the machine's
    physical memory otherwise (MPS shares it); None when the system does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure of torch (GPU or CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "Cannot allocate memory"))


def physical_cores() -> int:
    """Physical CPU cores available to this process (logical CPUs when the topology is unreadable)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add(siblings)
    return max(1, len(cores))


def keep_freed_memory_for_reuse() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB for reuse instead of returning them.

    By default a block this large is mapped from the system on allocation and unmapped on free,
    so every activation of every step pays fresh page faults: 8% of an AC-GAN step on 2 cores
    (docs/DECISIONS.md). The setting holds for the whole process and turns off glibc's own threshold
    adjustment: up to 1 GiB of freed memory stays with the process. Returns True when glibc took
    both settings, False otherwise (not glibc: nothing changes; an allocator preloaded in glibc's
    place ignores it).
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_threshold, 32 * 2 ** 20)) and bool(mallopt(m_trim_threshold, 2 ** 30))


def cpu_supports_bf16() -> bool:
    """Whether the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` in {auto, bf16, fp32} on ``device``; None means fp32."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_supports_bf16()
    else:
        supported = False
    if precision == "bf16" and not supported and device.type != "cpu":
        raise ConfigError(f"bf16 is not supported on {device}; use --precision fp32 or auto")
    return torch.bfloat16 if (supported or precision == "bf16") else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All global RNG states, for checkpoints."""
    # Only tensors and plain Python values, so that checkpoints load with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


TEMPORARY_SUFFIX = ".tmp"  # what a write killed midway can leave behind: .<name>.<random>.tmp


def _user_file_mode() -> int:
    """0666 less the process's umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``, so a
    reader sees the old file or the new one, never half of one. A failed write (a full disk, an
    I/O error) leaves the old file as it was and raises ``TrainingError`` naming the file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        os.fchmod(fd, _user_file_mode())  # mkstemp's 0600 would differ from every other file the run writes
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise TrainingError(f"cannot write {path} ({exc.strerror or exc}); {path.name} was left as it was: "
                                "free some space or fix the folder, then continue with --resume") from None
        raise


def remove_leftover_temporaries(folder: Path, names: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temporary files of writes killed midway in ``folder`` (ours, ``.<name>.<random>.tmp``,
    and ``<name>.tmp`` for each of ``names``); returns them."""
    leftovers = [p for p in Path(folder).glob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    leftovers += [Path(folder) / (name + TEMPORARY_SUFFIX) for name in names
                  if (Path(folder) / (name + TEMPORARY_SUFFIX)).is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) for a plain process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); returns this rank's device."""
    rank, world_size, local_rank = distributed_env()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return device


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce across ranks when distributed; a no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return tensor
