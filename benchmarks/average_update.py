"""What the AC-GAN's moving averages cost per step, beside the training step they follow.

    python benchmarks/average_update.py            # default recipe, random images, batch 64

The throughput and profile benchmarks time the recipe's ``train_step``; training also runs
``after_step`` after each one, which updates the averages of both networks' weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifargen.data import BatchLoader
from cifargen.recipes.acgan import update_average
from cifargen.registry import default_config, model_kind
from cifargen.training import setup_runtime
from throughput import load_images  # the sibling script: benchmarks/ is on sys.path when these run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    parser.add_argument("--updates", type=int, default=200, help="timed average updates per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (median reported)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if min(args.steps, args.updates, args.repeats) < 1:
        parser.error("--steps, --updates and --repeats must be at least 1")

    config = default_config("acgan", progress=False, device=args.device)
    device, autocast_dtype = setup_runtime(config)
    dataset = load_images(None, config.batch_size)  # random images: a step's cost does not depend on the pixels
    # steps_per_epoch only shapes the learning-rate schedule, which the timed calls do not step.
    recipe = model_kind("acgan").recipe_class(config, dataset.class_names, device, autocast_dtype, steps_per_epoch=1)
    recipe.train()
    x, y = next(iter(BatchLoader(dataset, config.batch_size, device, shuffle=False)))
    for _ in range(3):  # warm-up; the first update copies the weights
        recipe.train_step(x, y)
        recipe.after_step()

    def seconds_per_call(fn, calls: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # earlier work is not billed to this timing
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        if isinstance(out, dict):
            float(next(iter(out.values())))  # wait for the device's work
        elif device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / calls

    def update_both() -> None:
        for name, average in recipe.averages.items():
            update_average(average, recipe.modules[name])

    step_s, update_s = [], []
    for _ in range(args.repeats):
        step_s.append(seconds_per_call(lambda: recipe.train_step(x, y), args.steps))
        update_s.append(seconds_per_call(update_both, args.updates))
    values = sum(t.numel() for average in recipe.averages.values()
                 for t in (*average.module.parameters(), *average.module.buffers()))
    step, update = statistics.median(step_s), statistics.median(update_s)
    print(f"train_step {step * 1e3:.1f} ms; both averages' update {update * 1e3:.2f} ms "
          f"({values:,} values, {100 * update / step:.1f}% of the step); device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
