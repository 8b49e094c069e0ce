"""Choose the fitted prior's settings by measurement: for each number of components, covariance
type and regularisation, the mean log-likelihood of the test images' codes (nats) and, with a
reference classifier and --quality, the sample-quality figures of 10,000 samples.

    python benchmarks/prior_sweep.py RUN --json results/cvae/prior_sweep.json
    python benchmarks/prior_sweep.py RUN --grid 1:full:1e-4 3:full:1e-4 --quality --json OUT.json

RUN is a VAE or CVAE run folder (a run that stopped early works too: its best.pt is exported).
The codes are encoded once; every setting is fitted to the same training codes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cifargen.api import export_best_model, load_run_data
from cifargen.modelfile import load
from cifargen.priors import GaussianMixturePrior, PriorConfig, encode
from cifargen.quality import find_reference_classifier, sample_quality

DEFAULT_GRID = ("1:full:1e-6", "1:full:1e-4", "1:full:1e-2", "2:full:1e-4", "4:full:1e-4",
                "1:diag:1e-4", "10:diag:1e-4")


def parse_setting(text: str) -> PriorConfig:
    """``K:COV:REG`` or ``K:COV:REG:TEMPERATURE``."""
    components, covariance, reg, *temperature = text.split(":")
    return PriorConfig(n_components=int(components), covariance_type=covariance, reg_covar=float(reg),
                       temperature=float(temperature[0]) if temperature else 1.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="VAE or CVAE run folder")
    parser.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID), metavar="K:COV:REG[:T]",
                        help="settings to fit: components:full|tied|diag:reg_covar, and optionally the sampling "
                             "temperature (default: %(default)s)")
    parser.add_argument("--data-dir", help="data folder (default: the one the model was trained with)")
    parser.add_argument("--quality", action="store_true", help="also the sample-quality figures of each setting")
    parser.add_argument("--samples", type=int, default=10_000, help="samples per quality measurement")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)

    model = load(export_best_model(args.run))
    training = model.model_config.get("training", {})
    train_set, test_set = load_run_data(training, args.data_dir, progress=False)
    started = time.perf_counter()
    codes, labels = encode(model, train_set, "cpu")
    test_codes, test_labels = encode(model, test_set, "cpu")
    print(f"encoded {len(codes)} + {len(test_codes)} images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    classifier, reason = find_reference_classifier(test_set) if args.quality else (None, None)
    if args.quality and classifier is None:
        print(f"quality figures skipped: {reason}", file=sys.stderr)
    per_class = model.conditional
    rows = []
    for text in args.grid:
        config = parse_setting(text)
        started = time.perf_counter()
        prior = GaussianMixturePrior.fit(codes.numpy(), labels.numpy() if per_class else None, config,
                                         num_classes=model.config.num_classes)
        row = {"setting": text, "fit_seconds": round(time.perf_counter() - started, 2),
               "train_log_likelihood": float(prior.log_likelihood(codes, labels).mean()),
               "test_log_likelihood": float(prior.log_likelihood(test_codes, test_labels).mean())}
        if classifier is not None:
            model.fitted_prior = prior
            figures = sample_quality(model, classifier, test_set, "cpu", n=args.samples, prior="fitted",
                                     train_set=train_set)
            row.update({k: v for k, v in figures.items() if k != "quality_samples"})
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {"run": Path(args.run).name, "kind": model.kind, "per_class": per_class, "codes": len(codes),
              "test_codes": len(test_codes), "torch_version": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
