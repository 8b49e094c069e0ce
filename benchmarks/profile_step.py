"""Where a training step's time goes, operator by operator, in cifargen's own step.

    python benchmarks/profile_step.py --model vae --steps 20 --out results/profile_vae_cpu2.txt

Two timers:
- ``ops`` (the default on a CPU): every ATen operator that the step runs, forward and backward,
  timed by the wall clock as it returns. CPU operators run synchronously, so these are the times
  the step pays; their sum is printed beside the step's own wall time as a check. (torch.profiler's
  self-CPU times do not add up on a 2-core machine: they summed to 172 ms for a 117 ms AC-GAN
  step and gave LeakyReLU 4.6 ms for a call that takes 0.3 ms.)
- ``profiler`` (the default on GPUs, whose operators are asynchronous): torch.profiler's kernel times.

Operators are grouped by name, input shapes, dtypes and memory layouts (L channels-last,
N contiguous, S other strides), so a slow layout shows up as its own row.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cifargen.data import BatchLoader
from cifargen.registry import default_config, model_kind
from cifargen.training import setup_runtime
from throughput import load_images  # the sibling script: benchmarks/ is on sys.path when these run

DTYPE_LETTERS = {torch.float32: "f", torch.bfloat16: "b", torch.float16: "h", torch.int64: "i", torch.bool: "?"}
# other dtypes are written out: (262144,)int16


def describe(t: torch.Tensor) -> str:
    """Shape, dtype letter and, for 4-D tensors, layout letter: ``(64, 32, 32, 32)bL``."""
    layout = ""
    if t.dim() == 4:
        channels_last = t.is_contiguous(memory_format=torch.channels_last)
        layout = "N" if t.is_contiguous() else ("L" if channels_last else "S")
    return f"{tuple(t.shape)}{DTYPE_LETTERS.get(t.dtype, str(t.dtype).replace('torch.', ''))}{layout}"


class OperatorTimer(TorchDispatchMode):
    """Wall-clock time and call count of every operator dispatched while active."""

    def __init__(self):
        super().__init__()
        self.seconds = Counter()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        tensors = [a for a in tree_leaves(args) if isinstance(a, torch.Tensor)]
        key = (str(func.overloadpacket).replace("aten.", ""), " ".join(describe(t) for t in tensors[:3]))
        self.seconds[key] += elapsed
        self.calls[key] += 1
        return out


def is_convolution(name: str) -> bool:
    """convolution, convolution_backward, mkldnn_convolution, cudnn_convolution... (not cudnn_batch_norm)."""
    return "conv" in name.lower()


def run_steps(recipe, batches, steps: int) -> None:
    """``steps`` training steps, then one host sync so that all their work is done."""
    for _ in range(steps):
        out = recipe.train_step(*next(batches))
    float(next(iter(out.values())))


def time_operators(recipe, batches, steps: int) -> str:
    """Table of the operators' wall-clock time per step, largest first, and a summary line."""
    start = time.perf_counter()
    run_steps(recipe, batches, steps)
    step_ms = (time.perf_counter() - start) / steps * 1e3
    timer = OperatorTimer()
    with timer:
        run_steps(recipe, batches, steps)
    total = sum(timer.seconds.values())
    conv = sum(s for (name, _), s in timer.seconds.items() if is_convolution(name))
    lines = [f"{'ms/step':>8} {'share':>6} {'calls':>5}  operator and inputs (shape; dtype f float32, b bfloat16, "
             "i int64, ? bool, others by name; layout L channels-last, N contiguous, S strided)"]
    for (name, inputs), seconds in timer.seconds.most_common(30):
        lines.append(f"{seconds / steps * 1e3:8.2f} {100 * seconds / total:5.1f}% {timer.calls[name, inputs] // steps:5d}  {name} {inputs}")
    by_name = Counter()
    for (name, _), seconds in timer.seconds.items():
        by_name[name] += seconds
    lines.append("\nby operator, all inputs together:")
    for name, seconds in by_name.most_common(15):
        lines.append(f"{seconds / steps * 1e3:8.2f} {100 * seconds / total:5.1f}%  {name}")
    lines.append(f"step wall time {step_ms:.1f} ms unobserved; operators {total / steps * 1e3:.1f} ms per step "
                 f"while timed (the rest is Python and the timer); convolutions {100 * conv / total:.0f}% of operator time")
    return "\n".join(lines)


def profile_kernels(recipe, batches, steps: int, device: torch.device) -> str:
    """torch.profiler's table (kernel time on CUDA) and the convolutions' share of it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run_steps(recipe, batches, steps)
    events = prof.key_averages()
    sort_key = "self_device_time_total" if device.type != "cpu" else "self_cpu_time_total"
    total = sum(getattr(e, sort_key) for e in events)
    conv = sum(getattr(e, sort_key) for e in events if is_convolution(e.key))
    return (events.table(sort_by=sort_key, row_limit=20)
            + f"\nconvolutions {100 * conv / total:.0f}% of the profiler's {sort_key.replace('_', ' ')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["vae", "cvae", "acgan", "classifier"], default="vae")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--timer", choices=["auto", "ops", "profiler"], default="auto",
                        help="ops: wall clock per operator (CPU only, the default there); profiler: torch.profiler (the GPU default)")
    parser.add_argument("--out", help="also write the table to this text file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    config = default_config(args.model, device=args.device, precision=args.precision, progress=False)
    device, dtype = setup_runtime(config)
    n = config.batch_size * (2 * args.steps + 5)
    dataset = load_images(None, n)  # random images: the step's cost does not depend on the pixels
    recipe = model_kind(args.model).recipe_class(config, dataset.class_names, device, dtype, n // config.batch_size)
    recipe.start_epoch(1)
    recipe.train()
    batches = iter(BatchLoader(dataset, config.batch_size, device, shuffle=True))
    run_steps(recipe, batches, 5)  # warm-up
    timer = args.timer if args.timer != "auto" else ("ops" if device.type == "cpu" else "profiler")
    if timer == "ops" and device.type != "cpu":
        parser.error(f"--timer ops times operators by the host clock, which {device.type}'s asynchronous kernels "
                     "make meaningless; use --timer profiler")
    if timer == "profiler" and device.type not in ("cpu", "cuda"):
        parser.error(f"torch.profiler does not time {device.type} kernels; profile on a CPU or a CUDA GPU")
    heading = (f"{args.model}, batch {config.batch_size}, {str(dtype or torch.float32).replace('torch.', '')}, "
               f"{device}, {torch.get_num_threads()} threads, {args.steps} steps, timer {timer}")
    body = time_operators(recipe, batches, args.steps) if timer == "ops" else profile_kernels(recipe, batches, args.steps, device)
    text = heading + "\n" + body
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
