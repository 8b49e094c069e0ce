"""Where a training step's time goes: torch.profiler over cifargen's own step.

    python benchmarks/profile_step.py --model vae --steps 20 --out results/profile_vae_cpu2.txt

Prints the operators with the most self time (the kernels themselves, not their callers) and
the share of the step spent in convolutions (forward and backward) against everything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cifargen.data import BatchLoader, ImageDataset
from cifargen.recipes import default_config, model_entry
from cifargen.training import setup_runtime

CONVOLUTION_OPS = ("conv", "mkldnn_convolution", "convolution_backward", "cudnn")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["vae", "cvae", "acgan", "classifier"], default="vae")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--out", help="also write the table to this text file")
    args = parser.parse_args(argv)

    config = default_config(args.model, device=args.device, precision=args.precision, progress=False)
    device, dtype = setup_runtime(config)
    n = config.batch_size * (args.steps + 5)
    generator = torch.Generator().manual_seed(0)
    dataset = ImageDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                           torch.randint(0, 10, (n,), generator=generator), tuple(str(i) for i in range(10)))
    recipe = model_entry(args.model).recipe_class(config, dataset.class_names, device, dtype, n // config.batch_size)
    recipe.start_epoch(1)
    recipe.train()
    batches = iter(BatchLoader(dataset, config.batch_size, device, shuffle=True))
    for _ in range(5):
        recipe.train_step(*next(batches))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            out = recipe.train_step(*next(batches))
        float(next(iter(out.values())))
    events = prof.key_averages()
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort_key, row_limit=20)
    total = sum(getattr(e, sort_key) for e in events)
    conv = sum(getattr(e, sort_key) for e in events if any(k in e.key.lower() for k in CONVOLUTION_OPS))
    summary = (f"{args.model}, batch {config.batch_size}, {str(dtype or torch.float32).replace('torch.', '')}, "
               f"{device}, {torch.get_num_threads()} threads, {args.steps} steps: convolutions (forward and backward) "
               f"take {100 * conv / total:.0f}% of the operators' self time")
    print(table)
    print(summary)
    if args.out:
        Path(args.out).write_text(table + "\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
