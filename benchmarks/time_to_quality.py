"""Wall-clock time a finished (or running) training run took to reach a quality target.

    python benchmarks/time_to_quality.py visualize/vae              # VAE/CVAE: test rec <= 0.69
    python benchmarks/time_to_quality.py visualize/gan              # AC-GAN: test accuracy >= 0.69
    python benchmarks/time_to_quality.py RUN --target 0.65

Reads the run's ``metrics.json``: the time is the sum of the per-epoch seconds (training,
test-set evaluation and figures) up to the first epoch whose test figure meets the target, so
it is what a user waits with the default command, evaluation included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifargen.training import METRICS, read_metrics

DEFAULT_TARGETS = {"vae": 0.69, "cvae": 0.69, "acgan": 0.69}


def time_to_target(metrics: dict, target: float) -> dict | None:
    """{"epoch", "seconds", "value"} of the first epoch meeting ``target``, or None."""
    higher_is_better = metrics["best_metric"] == "accuracy"
    elapsed = 0.0
    for entry in metrics["history"]:
        elapsed += entry["seconds"]
        value = entry["test"][metrics["best_metric"]]
        if (value >= target) if higher_is_better else (value <= target):
            return {"epoch": entry["epoch"], "seconds": round(elapsed, 1), "value": value}
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.json")
    parser.add_argument("--target", type=float, help="default: 0.69 test rec (VAE/CVAE) or 0.69 test accuracy (AC-GAN)")
    args = parser.parse_args(argv)
    for run in args.runs:
        metrics = read_metrics(Path(run) / METRICS)
        if metrics is None or not isinstance(metrics.get("history"), list):
            print(f"{run}: no readable {METRICS} of a cifargen run; pass run folders", file=sys.stderr)
            return 2
        if args.target is None and metrics.get("model") not in DEFAULT_TARGETS:
            print(f"{run}: no default target for a {metrics.get('model')} run; pass --target", file=sys.stderr)
            return 2
        target = args.target if args.target is not None else DEFAULT_TARGETS[metrics["model"]]
        hit = time_to_target(metrics, target)
        where = f"{metrics['device_name']}, {metrics['threads']} thread(s), {metrics['precision']}"
        if hit is None:
            print(f"{run}: {metrics['best_metric']} target {target} not reached in {len(metrics['history'])} epochs ({where})")
        else:
            print(f"{run}: {metrics['best_metric']} {hit['value']:.4f} (target {target}) at epoch {hit['epoch']}, "
                  f"after {hit['seconds'] / 60:.1f} min ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
