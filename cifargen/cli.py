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

from .errors import CifargenError, ConfigError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _defaults_text(field: str, sub: str | None = None) -> str:
    from .recipes import MODELS, default_config

    values = {}
    for name in MODELS:
        config = default_config(name)
        value = getattr(getattr(config, sub), field) if sub else getattr(config, field)
        values.setdefault(value, []).append(name)
    return "default: " + "; ".join(f"{value} for {'/'.join(names)}" for value, names in values.items())


def build_parser() -> argparse.ArgumentParser:
    from .data import DATA_DIR_ENV
    from .recipes import MODELS

    parser = argparse.ArgumentParser(prog="cifargen", description="Train VAE, CVAE and AC-GAN models on CIFAR-10.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a model",
        description="Train a model on CIFAR-10 (or an image folder) and write figures, checkpoints and "
                    "metrics.json into the run folder. Flags left out take the model's defaults, which "
                    "reproduce README's results.")
    train.add_argument("model", choices=list(MODELS), help="which model to train")
    train.add_argument("--epochs", type=_positive_int, help=f"training epochs ({_defaults_text('epochs')})")
    train.add_argument("--batch-size", type=_positive_int,
                       help=f"images per step and per process ({_defaults_text('batch_size')})")
    train.add_argument("--lr", type=_positive_float, help=f"learning rate ({_defaults_text('lr')})")
    train.add_argument("--latent-dim", type=_positive_int, help=f"latent size ({_defaults_text('latent_dim', 'arch')})")
    train.add_argument("--width", type=_positive_int,
                       help=f"channels of the first convolution, doubled at each down-sampling ({_defaults_text('width', 'arch')})")
    train.add_argument("--data-dir", help=f"folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz (downloaded "
                                          f"there if absent), or an image folder root/<class>/*.png (default: ${DATA_DIR_ENV} or ./data)")
    train.add_argument("--out", help="run folder for figures, checkpoints and metrics.json (default: visualize/<model>, visualize/gan for acgan)")
    train.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    train.add_argument("--seed", type=int, help="random seed (default: 0)")
    train.add_argument("--limit-train", type=_positive_int, metavar="N", help="train on the first N training images only")
    train.add_argument("--limit-test", type=_positive_int, metavar="N", help="evaluate on the first N test images only")
    train.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                       help="bf16 autocast or fp32; auto uses bf16 on GPUs and CPUs with native bf16 (default: auto)")
    train.add_argument("--compile", action="store_true", default=None, help="use torch.compile on the networks")
    train.add_argument("--threads", type=_positive_int, help="CPU threads (default: the physical cores)")
    train.add_argument("--kl-shape", choices=["geometric", "linear"], help="VAE/CVAE: how lambda rises from 1e-4 to 1 (default: geometric)")
    train.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                       help="continue the run in --out (or in RUN_DIR) from its last complete epoch")
    train.add_argument("--overwrite", action="store_true", default=None, help="replace a run already in --out")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide the progress bars")
    return parser


_TOP_LEVEL = ("epochs", "batch_size", "lr", "data_dir", "out", "device", "seed", "limit_train", "limit_test",
              "precision", "compile", "threads", "overwrite", "progress")


def config_from_args(args: argparse.Namespace):
    """The training configuration that ``cifargen train`` flags describe."""
    from .recipes import default_config, model_entry

    overrides = {name: getattr(args, name) for name in _TOP_LEVEL if getattr(args, name) is not None}
    if isinstance(args.resume, str):
        overrides["out"] = args.resume
    resume = args.resume is not None
    config = default_config(args.model)
    if resume:
        config = _saved_config(args.model, Path(overrides.get("out") or model_entry(args.model).default_out), config)
    config = dataclasses.replace(config, **overrides, resume=resume)
    arch = {k: v for k, v in (("latent_dim", args.latent_dim), ("width", args.width)) if v is not None}
    if arch:
        config.arch = dataclasses.replace(config.arch, **arch)
    if args.kl_shape is not None:
        if not hasattr(config, "kl"):
            raise ConfigError(f"--kl-shape applies to vae and cvae, not {args.model}")
        config.kl = dataclasses.replace(config.kl, shape=args.kl_shape)
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
    return _from_dict(type(config), saved)


def _from_dict(cls, values: dict):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from .recipes import train

            metrics = train(config_from_args(args))
            print(json.dumps({"out": metrics["config"]["out"], "best_epoch": metrics["best_epoch"],
                              "best": metrics["best"], "wall_time_s": metrics["wall_time_s"]}, indent=2))
        return 0
    except CifargenError as exc:
        print(f"cifargen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cifargen: interrupted", file=sys.stderr)
        return 130
