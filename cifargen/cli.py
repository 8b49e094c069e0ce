"""Command line: a thin layer over the configuration dataclasses and :func:`cifargen.train`.

    cifargen train vae                 # 60 epochs on CIFAR-10 in ./data, outputs in visualize/vae
    cifargen train cvae --epochs 5 --limit-train 5000
    cifargen train vae --resume visualize/vae
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .configs import config_from_dict
from .errors import CifargenError, ConfigError


def _int_in(low: int, high: int | None, what: str):
    """An argparse type: a whole number in [low, high) (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


_positive_int = _int_in(1, None, "positive")
_seed = _int_in(0, 2 ** 63, "between 0 and 2**63 - 1")


def _float_where(accept, what: str):
    """An argparse type: a number for which ``accept(value)`` holds (NaN never does)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


_positive_float = _float_where(lambda v: 0 < v < float("inf"), "a positive number")
_fraction = _float_where(lambda v: 0 <= v < 1, "in [0, 1)")
_non_negative_float = _float_where(lambda v: 0 <= v < float("inf"), "a number >= 0")


def _defaults_text(field: str, sub: str | None = None, models=None) -> str:
    from .recipes import GENERATORS, default_config

    values = {}
    for name in models or GENERATORS:
        config = default_config(name)
        holder = getattr(config, sub) if sub else config
        if hasattr(holder, field):
            values.setdefault(getattr(holder, field), []).append(name)
    return "default: " + "; ".join(f"{value} for {'/'.join(names)}" for value, names in values.items())


def _add_training_flags(parser: argparse.ArgumentParser, out_help: str, models=None) -> None:
    """The flags ``cifargen train`` and ``cifargen classifier train`` share."""
    from .data import DATA_DIR_ENV

    parser.add_argument("--epochs", type=_positive_int, help=f"training epochs ({_defaults_text('epochs', models=models)})")
    parser.add_argument("--batch-size", type=_positive_int,
                        help=f"images per step and per process ({_defaults_text('batch_size', models=models)})")
    parser.add_argument("--lr", type=_positive_float, help=f"learning rate ({_defaults_text('lr', models=models)})")
    parser.add_argument("--width", type=_positive_int, help="channels of the first convolution, doubled at each "
                                                            f"down-sampling ({_defaults_text('width', 'arch', models)})")
    parser.add_argument("--data-dir", help=f"folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz (downloaded "
                                           f"there if absent), or an image folder root/<class>/*.png (default: ${DATA_DIR_ENV} or ./data)")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--seed", type=_seed, help="random seed (default: 0)")
    parser.add_argument("--limit-train", type=_positive_int, metavar="N", help="train on the first N training images only")
    parser.add_argument("--limit-test", type=_positive_int, metavar="N", help="evaluate on the first N test images only")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                        help="bf16 autocast or fp32; auto uses bf16 on GPUs and CPUs with native bf16 (default: auto)")
    parser.add_argument("--compile", action="store_true", default=None, help="use torch.compile on the networks")
    parser.add_argument("--threads", type=_positive_int, help="CPU threads (default: the physical cores)")
    parser.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                        help="continue the run in --out (or in RUN_DIR) from its last complete epoch")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace a run already in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide the progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .recipes import GENERATORS
    from .recipes.classifier import CACHE_ENV

    parser = argparse.ArgumentParser(prog="cifargen", description="Train VAE, CVAE and AC-GAN models on CIFAR-10.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a model",
        description="Train a model on CIFAR-10 (or an image folder) and write figures, checkpoints and "
                    "metrics.json into the run folder. Flags left out take the model's defaults, which "
                    "reproduce README's results.")
    train.add_argument("model", choices=list(GENERATORS), help="which model to train")
    _add_training_flags(train, out_help="run folder for figures, checkpoints and metrics.json "
                                         "(default: visualize/<model>, visualize/gan for acgan)")
    train.add_argument("--latent-dim", type=_positive_int, help=f"latent size ({_defaults_text('latent_dim', 'arch')})")
    train.add_argument("--kl-shape", choices=["geometric", "linear"], help="VAE/CVAE: how lambda rises from 1e-4 to 1 (default: geometric)")
    train.add_argument("--kl-ramp-from", type=_fraction, metavar="FRACTION",
                       help="VAE/CVAE: fraction of the run after which lambda leaves 1e-4 and rises to 1 at the last "
                            "epoch (default: 0.667; 0 ramps right after the KL-free first epoch)")
    train.add_argument("--d-lr", type=_positive_float, metavar="LR",
                       help="AC-GAN: the discriminator's learning rate (default: --lr)")
    train.add_argument("--mode-seeking", type=_non_negative_float, metavar="WEIGHT",
                       help="AC-GAN: weight of the mode-seeking term against within-class collapse (default: 0.3; 0 turns it off)")
    train.add_argument("--no-quality", dest="quality", action="store_false", default=None,
                       help="skip the sample-quality figures at the end (computed when a reference classifier exists)")

    classifier = commands.add_parser("classifier", help="the reference classifier for sample-quality figures",
                                     description="Train the CIFAR-10 classifier whose features and predictions "
                                                 "give the offline sample-quality figures (see `cifargen eval`).")
    classifier_commands = classifier.add_subparsers(dest="classifier_command", metavar="COMMAND", required=True)
    classifier_train = classifier_commands.add_parser(
        "train", help="train the reference classifier",
        description="Train the reference classifier (a small ResNet) and save it in the cache folder, where "
                    "`cifargen eval` and the end of `cifargen train` look for it.")
    _add_training_flags(classifier_train, models=("classifier",),
                        out_help=f"folder for the classifier (default: ${CACHE_ENV}/classifier or ~/.cache/cifargen/classifier)")

    evaluate = commands.add_parser("eval", help="recompute a trained model's test-set figures",
                                   description="Recompute the headline test figures of a trained model "
                                               "(a run folder or a model.safetensors file) and print them.")
    evaluate.add_argument("run", help="run folder (holding model.safetensors and config.json) or model file")
    evaluate.add_argument("--data-dir", help="CIFAR-10 root (default: the one the model was trained with)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    evaluate.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                          help="default: the precision the model was trained and evaluated with")
    evaluate.add_argument("--limit-test", type=_positive_int, metavar="N",
                          help="first N test images (default: as in training)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--confusion", metavar="PNG", help="AC-GAN: also save the confusion matrix figure here")
    evaluate.add_argument("--no-quality", dest="quality", action="store_false",
                          help="skip the sample-quality figures (FD-cifargen, IS-cifargen, class consistency, diversity; "
                               "for the reference classifier: the same figures for real images)")
    evaluate.add_argument("--classifier", metavar="DIR",
                          help="reference classifier folder (default: the cache folder `cifargen classifier train` writes)")
    evaluate.add_argument("--quality-samples", type=_positive_int, default=10_000, metavar="N",
                          help="samples behind the sample-quality figures (default: 10000)")
    evaluate.add_argument("--inception-weights", metavar="PATH",
                          help="torch-fidelity's Inception weights file, for the standard FID/IS/KID "
                               "(default: torch hub's cache; skipped with one line when absent)")

    sample = commands.add_parser("sample", help="draw sample grids from a trained model",
                                 description="Write samples.png (one row per class for conditional models) and, "
                                             "with --interpolate, interpolation.png, upscaled 4x (nearest).")
    sample.add_argument("run", help="run folder or model.safetensors file")
    sample.add_argument("--out", required=True, help="folder for the PNG grids")
    sample.add_argument("--n", type=_positive_int, default=100, help="number of samples (default: 100)")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    sample.add_argument("--interpolate", action="store_true", help="also interpolate between the z of two seeds")
    sample.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    return parser


_RESUMABLE_CHANGES = {"out", "device", "threads", "progress", "data_dir", "overwrite", "quality"}
_ACGAN_ONLY = ("d_lr", "mode_seeking")
_TOP_LEVEL = _ACGAN_ONLY + ("epochs", "batch_size", "lr", "data_dir", "out", "device", "seed", "limit_train", "limit_test",
              "precision", "compile", "threads", "overwrite", "progress", "quality")


def config_from_args(args: argparse.Namespace):
    """The training configuration that ``cifargen train`` (or ``classifier train``) flags describe."""
    from .recipes import default_config, model_entry

    overrides = {name: getattr(args, name) for name in _TOP_LEVEL if getattr(args, name, None) is not None}
    kl = {k: v for k, v in (("shape", getattr(args, "kl_shape", None)),
                            ("ramp_from", getattr(args, "kl_ramp_from", None))) if v is not None}
    if isinstance(args.resume, str):
        overrides["out"] = args.resume
    resume = args.resume is not None
    config = default_config(args.model)
    for name in _ACGAN_ONLY:
        if name in overrides and not hasattr(config, name):
            raise ConfigError(f"--{name.replace('_', '-')} applies to acgan, not {args.model}")
    arch = {k: v for k, v in (("latent_dim", getattr(args, "latent_dim", None)), ("width", args.width)) if v is not None}
    if resume:
        config = _saved_config(args.model, Path(overrides["out"]) if overrides.get("out") else model_entry(args.model).out_dir(), config)
        # A resumed run must be the run that was started: only where and how it runs may change.
        changed = sorted(set(overrides) - _RESUMABLE_CHANGES) + sorted(arch) + ["kl_" + k for k in kl]
        changed = [name for name in changed if name in arch or name.startswith("kl_") or overrides[name] != getattr(config, name)]
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise ConfigError(f"{flags} cannot change when resuming; resume with the run's own settings, "
                              "or start a new run with --overwrite or another --out")
    config = dataclasses.replace(config, **overrides, resume=resume)
    if arch:
        config.arch = dataclasses.replace(config.arch, **arch)
    if kl:
        if not hasattr(config, "kl"):
            raise ConfigError(f"--kl-shape and --kl-ramp-from apply to vae and cvae, not {args.model}")
        config.kl = dataclasses.replace(config.kl, **kl)
    return config


def _saved_config(model: str, out: Path, config):
    """The configuration a run was started with, read from its checkpoint, for --resume."""
    from .training import CHECKPOINT, load_checkpoint

    path = out / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} does not exist; is {out} a cifargen run folder?")
    try:
        saved = load_checkpoint(path, "cpu")["config"]
    except KeyError:
        raise ConfigError(f"cannot resume: {path} holds no run configuration") from None
    if saved.get("model") != model:
        raise ConfigError(f"cannot resume: {out} holds a {saved.get('model')} run, not {model}")
    return config_from_dict(type(config), saved)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "classifier"):
            from .recipes import train

            if args.command == "classifier":
                args.model = "classifier"
            metrics = train(config_from_args(args))
            print(json.dumps({"out": metrics["config"]["out"], "best_epoch": metrics["best_epoch"],
                              "best": metrics["best"], "wall_time_s": metrics["wall_time_s"]}, indent=2))
        elif args.command == "eval":
            run_eval(args)
        elif args.command == "sample":
            run_sample(args)
        return 0
    except CifargenError as exc:
        print(f"cifargen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cifargen: interrupted", file=sys.stderr)
        return 130


def run_eval(args: argparse.Namespace) -> dict:
    """``cifargen eval``: load the model, evaluate it on the test set, print a table or JSON."""
    from .data import default_data_dir, load_dataset
    from .evaluation import evaluate_model
    from .modelfile import load
    from .plotting import plot_confusion
    from .runtime import resolve_device, resolve_precision

    device = resolve_device(args.device)
    model = load(args.run, device)
    training = model.model_config.get("training", {})
    trained_precision = model.model_config.get("metrics", {}).get("precision", "float32")
    precision = args.precision or ("bf16" if trained_precision == "bfloat16" else "fp32")
    dtype = resolve_precision(precision, device)
    data_dir = args.data_dir or training.get("data_dir") or default_data_dir()
    test_set = load_dataset(data_dir, train=False).head(args.limit_test or training.get("limit_test"))
    figures = evaluate_model(model, test_set, device, dtype)
    if model.kind == "classifier" and args.quality:
        from .quality import real_image_reference

        train_set = load_dataset(data_dir, train=True)
        reference = real_image_reference(model, train_set, test_set, device, dtype, n=args.quality_samples)
        figures.update({f"real_{k}": v for k, v in reference.items()})
    elif args.quality:
        figures.update(_quality_figures(args, model, test_set, device, dtype))
    if model.kind == "acgan" and args.confusion:
        try:
            plot_confusion(figures["confusion"], test_set.class_names, args.confusion,
                           f"AC-GAN auxiliary classifier on {len(test_set)} test images")
        except OSError as exc:
            raise ConfigError(f"cannot write --confusion {args.confusion} ({exc.strerror or exc})") from None
    result = {"model": model.kind, "test_images": len(test_set), "precision": precision, "device": str(device),
              **figures}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rows = [(k, v) for k, v in figures.items() if isinstance(v, float)]
        rows += [(f"accuracy[{name}]", v) for name, v in figures.get("per_class_accuracy", {}).items()]
        width = max(len(k) for k, _ in rows)
        print(f"{model.kind} on {len(test_set)} test images ({device}, {precision})")
        for key, value in rows:
            print(f"  {key:<{width}}  {value:.4f}")
    return result


def _quality_figures(args: argparse.Namespace, model, test_set, device, dtype) -> dict:
    """Sample-quality figures for ``cifargen eval``; each missing piece is one line on stderr, never an error."""
    from .quality import inception_metrics, load_reference_classifier, reference_classifier_path, sample_quality

    def note(line: str) -> None:
        print(line, file=sys.stderr)

    figures = {}
    classifier = load_reference_classifier(args.classifier, device)
    if classifier is None:
        if args.classifier:
            raise ConfigError(f"--classifier {args.classifier}: no model.safetensors there; "
                              "train one with: cifargen classifier train --out DIR")
        note(f"sample-quality figures skipped: no reference classifier in {reference_classifier_path()} "
             "(train one with: cifargen classifier train)")
    else:
        figures.update(sample_quality(model, classifier, test_set, device, dtype, n=args.quality_samples))
    inception = inception_metrics(model, test_set, device, args.inception_weights, n=args.quality_samples, log=note)
    figures.update(inception or {})
    return figures


def run_sample(args: argparse.Namespace) -> None:
    """``cifargen sample``: write sample grids from a trained model."""
    from .modelfile import load
    from .runtime import resolve_device
    from .sampling import write_samples

    device = resolve_device(args.device)
    model = load(args.run, device)
    if model.kind == "classifier":
        raise ConfigError(f"{args.run} is the reference classifier, which does not generate images; pass a vae, cvae or acgan run")
    try:
        paths = write_samples(model, Path(args.out), args.n, args.seed, args.interpolate, device)
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {args.out} ({exc.strerror or exc}); choose a writable folder") from None
    for path in paths:
        print(path)
