"""Command line: a thin layer over the configuration dataclasses and the Python API.

    cifargen train vae                           # the default run, outputs in visualize/vae
    cifargen train cvae --epochs 5 --set arch.width=16
    cifargen train vae --config runs/vae/config.json --out runs/vae-again
    cifargen train vae --resume visualize/vae
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .api import check_classes, evaluate_model, export_best_model, fit_run_prior, load_run_data, train
from .configs import config_from_dict, flatten, parse_setting, read_config_file, with_settings
from .data import DATA_DIR_ENV, DATASETS
from .errors import CifargenError, ConfigError
from .modelfile import WEIGHTS, load
from .plotting import plot_confusion
from .priors import COVARIANCE_TYPES, PriorConfig
from .quality import find_reference_classifier, inception_metrics, quality_report, real_image_reference
from .registry import GENERATORS, MODELS, default_config, model_kind
from .runtime import CACHE_ENV, resolve_device, resolve_precision
from .sampling import default_prior, draw_samples, write_samples
from .training import CHECKPOINT, load_checkpoint


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
_temperature = _float_where(lambda v: 0 < v <= 1, "in (0, 1]")
_non_negative_float = _float_where(lambda v: 0 <= v < float("inf"), "a number >= 0")


def _defaults_text(setting: str, models=None) -> str:
    """``default: 0.0005 for vae/cvae; 0.0002 for acgan`` for a dotted ``setting``, read off the dataclasses."""
    values = {}
    for name in models or GENERATORS:
        holder = default_config(name)
        for part in setting.split("."):
            holder = getattr(holder, part, _MISSING)
        if holder is not _MISSING:
            values.setdefault(holder, []).append(name)
    return "default: " + "; ".join(f"{value} for {'/'.join(names)}" for value, names in values.items())


_MISSING = object()
SETTING = "setting:"  # argparse dest prefix of a flag that sets one configuration field
FLAG_OF = "flag-of:"  # argparse default holding the flag's own name, for messages about it


def _setting_flag(parser, flag: str, setting: str, help: str, models=None, **kwargs) -> None:
    """A flag that sets the configuration field ``setting`` (dotted), its default read off the dataclasses."""
    if "action" not in kwargs and "(default" not in help:  # a help that states its default keeps it
        help = f"{help} ({_defaults_text(setting, models)})"
    if "action" not in kwargs and "choices" not in kwargs:
        kwargs.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
    parser.add_argument(flag, dest=SETTING + setting, default=None, help=help, **kwargs)
    parser.set_defaults(**{FLAG_OF + setting: flag})


def _add_training_flags(parser: argparse.ArgumentParser, out_help: str, models=None) -> None:
    """The flags ``cifargen train`` and ``cifargen classifier train`` share."""
    _setting_flag(parser, "--epochs", "epochs", "training epochs", models, type=_positive_int)
    _setting_flag(parser, "--batch-size", "batch_size", "images per step and per process", models, type=_positive_int)
    _setting_flag(parser, "--lr", "lr", "learning rate", models, type=_positive_float)
    width_help = "channels of the first convolution, doubled at each down-sampling"
    if models is None or "acgan" in models:
        width_help += " (AC-GAN: the generator's; --set arch.d_width sets the discriminator's)"
    _setting_flag(parser, "--width", "arch.width", width_help, models, type=_positive_int)
    _setting_flag(parser, "--data-dir", "data_dir", "folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                  "(downloaded there if the folder is empty or absent), or a folder of your images: root/<class>/<images>, "
                  f"optionally under train/ and test/ (default: ${DATA_DIR_ENV} or ./data)")
    _setting_flag(parser, "--dataset", "dataset", "what --data-dir holds; auto detects it",
                  choices=list(DATASETS))
    _setting_flag(parser, "--image-size", "image_size", "image size in pixels: images are resized on their shorter side "
                  "and center-cropped; the architecture follows (a multiple of 4, at least 16)", models,
                  type=_positive_int, metavar="N")
    _setting_flag(parser, "--test-fraction", "test_fraction", "image folders without test/: the seeded, class-stratified "
                  "share of the images held out as the test split", models, type=_fraction, metavar="F")
    _setting_flag(parser, "--out", "out", out_help)
    _setting_flag(parser, "--device", "device", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)")
    _setting_flag(parser, "--seed", "seed", "random seed (default: 0)", type=_seed)
    _setting_flag(parser, "--limit-train", "limit_train", "train on N training images only: CIFAR-10's first N, "
                  "a seeded class-stratified subset of an image folder (default: all)", type=_positive_int, metavar="N")
    _setting_flag(parser, "--limit-test", "limit_test", "evaluate on N test images only, chosen as for --limit-train "
                  "(default: all)", type=_positive_int, metavar="N")
    _setting_flag(parser, "--precision", "precision", "bf16 autocast or fp32; auto uses bf16 on GPUs and CPUs with "
                  "native bf16 (default: auto)", choices=["auto", "bf16", "fp32"])
    _setting_flag(parser, "--compile", "compile", "use torch.compile on the networks", action="store_const", const=True)
    _setting_flag(parser, "--threads", "threads", "CPU threads (default: the physical cores)", type=_positive_int)
    _setting_flag(parser, "--overwrite", "overwrite", "replace a run already in --out (its files are removed once the "
                  "new run has loaded its data and built its model)", action="store_const", const=True)
    _setting_flag(parser, "--no-progress", "progress", "hide the progress bars", action="store_const", const=False)
    parser.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                        help="continue the run in --out (or in RUN_DIR) from where it stopped")
    parser.add_argument("--config", metavar="FILE",
                        help="start from the settings in FILE: a run's config.json or metrics.json, or a TOML file "
                             "(flags and --set override it)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="set any configuration field, dotted for nested ones: --set arch.width=64 "
                             "--set kl.ramp_from=0.5 (repeatable; applied last)")


def build_parser() -> argparse.ArgumentParser:
    """The ``cifargen`` argument parser."""
    parser = argparse.ArgumentParser(prog="cifargen", description="Train, evaluate and sample VAE, CVAE and "
                                                                   "AC-GAN models on CIFAR-10 or your own images.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a model",
        description="Train a model and write figures, checkpoints and metrics.json into the run folder. "
                    "Settings left out take the model's defaults, which reproduce the headline results; "
                    "every setting can be given with --set KEY=VALUE or in a --config file.")
    train.add_argument("model", choices=list(GENERATORS),
                       help="; ".join(f"{name}: {MODELS[name].summary}" for name in GENERATORS))
    _add_training_flags(train, out_help="run folder for figures, checkpoints and metrics.json "
                                        f"(default: {', '.join(str(MODELS[n].out_dir()) for n in GENERATORS)})")
    _setting_flag(train, "--latent-dim", "arch.latent_dim", "latent size", type=_positive_int)
    _setting_flag(train, "--kl-shape", "kl.shape", "VAE/CVAE: how lambda rises from 1e-4 to 1 (default: geometric)",
                  choices=["geometric", "linear"])
    _setting_flag(train, "--kl-ramp-from", "kl.ramp_from", "VAE/CVAE: fraction of the run after which lambda leaves "
                  "1e-4 and rises to 1 at the last epoch (default: 0.667; 0 ramps right after the KL-free first epoch)",
                  type=_fraction, metavar="FRACTION")
    _setting_flag(train, "--d-lr", "d_lr", "AC-GAN: the discriminator's learning rate (default: --lr)",
                  type=_positive_float, metavar="LR")
    _setting_flag(train, "--mode-seeking", "mode_seeking", "AC-GAN: weight of the mode-seeking term against "
                  "within-class collapse; 0 turns it off", type=_non_negative_float, metavar="WEIGHT")
    _setting_flag(train, "--ema-decay", "ema_decay", "AC-GAN: keep exponential moving averages of both networks' weights "
                  "with this decay per step; they draw the figures, are evaluated and saved; 0 turns them off",
                  type=_fraction, metavar="DECAY")
    _setting_flag(train, "--no-quality", "quality", "skip the sample-quality figures at the end (computed when a "
                  "reference classifier exists)", action="store_const", const=False)
    _setting_flag(train, "--tensorboard", "tensorboard", "also write a TensorBoard log (every epoch's figures and "
                  "images) into DIR (default (DIR left out): tensorboard/ in the run folder); needs "
                  'pip install "cifargen[tensorboard]"', nargs="?", const="", metavar="DIR")

    classifier = commands.add_parser("classifier", help="the reference classifier for sample-quality figures",
                                     description="Train the CIFAR-10 classifier whose features and predictions "
                                                 "give the offline sample-quality figures (see `cifargen eval`).")
    classifier_commands = classifier.add_subparsers(dest="classifier_command", metavar="COMMAND", required=True)
    classifier_train = classifier_commands.add_parser(
        "train", help="train the reference classifier",
        description="Train the reference classifier (a small ResNet) and save it in the cache folder, where "
                    "`cifargen eval` and the end of `cifargen train` look for it.")
    _add_training_flags(classifier_train, models=("classifier",),
                        out_help=f"folder for the classifier (default: the data set's folder under ${CACHE_ENV}/classifier/ "
                                 "or ~/.cache/cifargen/classifier/, where the sample-quality figures look for it)")

    evaluate = commands.add_parser("eval", help="recompute a trained model's test-set figures",
                                   description="Recompute the headline test figures of a trained model "
                                               "(a run folder or a model.safetensors file) and print them.")
    evaluate.add_argument("run", help="run folder (holding model.safetensors and config.json) or model file")
    evaluate.add_argument("--data-dir", help="data folder (default: the one the model was trained with)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    evaluate.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                          help="default: the precision the model was trained and evaluated with")
    evaluate.add_argument("--limit-test", type=_positive_int, metavar="N",
                          help="N test images, chosen as in training (CIFAR: the first N; a folder: a seeded, "
                               "class-stratified subset; default: as in training)")
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
    sample.add_argument("--prior", choices=["fitted", "standard"],
                        help="VAE/CVAE: sample the fitted prior or z ~ N(0, I) (default: fitted when the model has one)")
    sample.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")

    fit = commands.add_parser("fit-prior", help="fit a VAE/CVAE's latent prior to its training codes",
                              description="Encode the training images with a trained VAE or CVAE, fit a Gaussian "
                                          "mixture to their codes (one per class for the CVAE) and store it in the "
                                          "model file; `cifargen sample` and `eval` then use it. `cifargen train` "
                                          "does this at the end of every VAE/CVAE run.")
    fit.add_argument("run", help="run folder of a vae or cvae (also one whose training stopped early)")
    defaults = PriorConfig()
    fit.add_argument("--components", type=_positive_int, default=defaults.n_components,
                     help=f"mixture components per mixture (default: {defaults.n_components})")
    fit.add_argument("--covariance", choices=list(COVARIANCE_TYPES), default=defaults.covariance_type,
                     help="covariance of each component; tied: one shared by a mixture's components "
                          f"(default: {defaults.covariance_type})")
    fit.add_argument("--reg-covar", type=_non_negative_float, default=defaults.reg_covar,
                     help=f"added to every covariance's diagonal (default: {defaults.reg_covar})")
    fit.add_argument("--temperature", type=_temperature, default=defaults.temperature,
                     help="sample from each component with its spread times this factor, in (0, 1]: below 1 trades "
                          f"diversity for typical samples (default: {defaults.temperature}, the fitted density)")
    fit.add_argument("--data-dir", help="data folder (default: the one the model was trained with)")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    fit.add_argument("--no-quality", dest="quality", action="store_false",
                     help="skip the sample-quality figures (computed when a reference classifier exists)")

    serve = commands.add_parser("serve", help="a local web page to explore trained models",
                                description="Serve a page that shows each model's figures and training curves and "
                                            "draws samples, interpolations and reconstructions on request. Needs "
                                            'pip install "cifargen[serve]".')
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run folders or model.safetensors files to serve")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; the page has no login)")
    serve.add_argument("--port", type=_int_in(0, 65536, "a port number from 0 to 65535"), default=8000,
                       help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    return parser


# Settings that say where and how a run goes on, not what it trains: a resumed run may change them.
RESUMABLE_SETTINGS = {"out", "device", "threads", "progress", "data_dir", "overwrite", "quality", "resume",
                      "fit_prior", "prior", "quality_samples", "tensorboard"}


def config_from_args(args: argparse.Namespace):
    """The training configuration that ``cifargen train`` (or ``classifier train``) arguments describe:
    the model's defaults (or, resuming, the run's own settings), then ``--config``, flags and ``--set``."""
    kind = model_kind(args.model)
    flags = {dest[len(SETTING):]: value for dest, value in vars(args).items()
             if dest.startswith(SETTING) and value is not None}
    for setting in flags:
        group = setting.split(".")[0]
        if not hasattr(kind.default_config(), group):
            owners = "/".join(n for n in GENERATORS if hasattr(default_config(n), group))
            raise ConfigError(f"{getattr(args, FLAG_OF + setting)} applies to {owners}, not {args.model}")
    if isinstance(args.resume, str):
        flags["out"] = args.resume
    resume = args.resume is not None
    base = kind.default_config()
    if resume:
        where = {k: v for k, v in flags.items() if k in ("data_dir", "dataset", "image_size")}
        base = _saved_config(args.model, Path(flags.get("out") or kind.out_dir(with_settings(base, where))), base)
    started_with = base
    if args.config:
        file_settings = read_config_file(args.config, type(base))
        if file_settings.get("model", args.model) != args.model:
            raise ConfigError(f"--config {args.config} configures {file_settings['model']}, not {args.model}; "
                              f"train {file_settings['model']} or use another file")
        base = with_settings(base, flatten(file_settings), source=f"--config {args.config}:")
    config = with_settings(base, flags, source="flag")
    config = with_settings(config, dict(parse_setting(text) for text in args.settings))
    config = dataclasses.replace(config, resume=resume)
    if resume:
        saved, now = flatten(dataclasses.asdict(started_with)), flatten(dataclasses.asdict(config))
        changed = sorted(k for k in now if k.split(".")[0] not in RESUMABLE_SETTINGS and now[k] != saved.get(k))
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change when resuming; resume with the run's own "
                              "settings, or start a new run with --overwrite or another --out")
    return config


def _saved_config(model: str, out: Path, config):
    """The configuration a run was started with, read from its checkpoint, for --resume."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} does not exist; is {out} a cifargen run folder?")
    try:
        saved = load_checkpoint(path, "cpu")["config"]
    except (KeyError, TypeError):
        raise ConfigError(f"cannot resume: {path} holds no run configuration") from None
    if saved.get("model") != model:
        raise ConfigError(f"cannot resume: {out} holds a {saved.get('model')} run, not {model}")
    return config_from_dict(type(config), saved)


def main(argv: list[str] | None = None) -> int:
    """The ``cifargen`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "classifier"):
            if args.command == "classifier":
                args.model = "classifier"
            metrics = train(config_from_args(args))
            print(json.dumps({"out": metrics["config"]["out"], "best_epoch": metrics["best_epoch"],
                              "best": metrics["best"], "wall_time_s": metrics["wall_time_s"]}, indent=2))
        elif args.command == "eval":
            run_eval(args)
        elif args.command == "sample":
            run_sample(args)
        elif args.command == "fit-prior":
            prior = PriorConfig(args.components, args.covariance, args.reg_covar, temperature=args.temperature)
            report = fit_run_prior(args.run, prior, resolve_device(args.device), args.data_dir, args.quality)
            print(json.dumps(report, indent=2))
        elif args.command == "serve":
            from .serve import run_server  # the web framework is an optional extra

            run_server(args.runs, args.host, args.port, args.device)
        return 0
    except CifargenError as exc:
        print(f"cifargen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cifargen: interrupted", file=sys.stderr)
        return 130


def run_eval(args: argparse.Namespace) -> dict:
    """``cifargen eval``: load the model, evaluate it on the test set, print a table or JSON."""
    device = resolve_device(args.device)
    model = load(export_best_model(args.run, device, args.data_dir) if Path(args.run).is_dir() else args.run, device)
    kind = model_kind(model.kind)
    training = model.model_config.get("training", {})
    trained_precision = model.model_config.get("metrics", {}).get("precision", "float32")
    precision = args.precision or ("bf16" if trained_precision == "bfloat16" else "fp32")
    dtype = resolve_precision(precision, device)
    # The reference classifier's real-image row compares the whole training split with the test images.
    train_set, test_set = load_run_data(training if kind.generative else {**training, "limit_train": None},
                                        args.data_dir, args.limit_test,
                                        log=lambda line: print(line, file=sys.stderr))
    check_classes(model, test_set)
    if args.confusion and not kind.classifies:  # refused before the evaluation's minutes
        raise ConfigError(f"--confusion: a {model.kind} model has no class predictions to plot; it is for acgan runs")
    figures = evaluate_model(model, test_set, device, dtype)
    if not kind.generative and args.quality:
        reference = real_image_reference(model, train_set, test_set, device, dtype, n=args.quality_samples)
        figures.update({f"real_{k}": v for k, v in reference.items()})
    elif args.quality:
        figures.update(_quality_figures(args, model, train_set, test_set, device, dtype))
    if args.confusion:
        try:
            plot_confusion(figures["confusion"], test_set.class_names, args.confusion,
                           f"{model.kind} auxiliary classifier on {len(test_set)} test images")
        except OSError as exc:
            raise ConfigError(f"cannot write --confusion {args.confusion} ({exc.strerror or exc})") from None
    result = {"model": model.kind, "test_images": len(test_set), "precision": precision, "device": str(device),
              **figures}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rows = [(k, v) for k, v in figures.items() if isinstance(v, float)]
        rows += [(f"accuracy[{name}]", v) for name, v in figures.get("per_class_accuracy", {}).items()]
        quality = figures.get("quality", {})
        sections = {name: part for name, part in quality.items() if isinstance(part, dict) and name != "classifier"}
        rows += [(f"{name}: {k}", v) for name, part in sections.items() for k, v in part.items() if isinstance(v, float)]
        rows += [(k, v) for k, v in quality.items() if isinstance(v, float)]
        width = max(len(k) for k, _ in rows)
        print(f"{model.kind} on {len(test_set)} test images ({device}, {precision})")
        for key, value in rows:
            print(f"  {key:<{width}}  {value:.4f}")
    return result


def _quality_figures(args: argparse.Namespace, model, train_set, test_set, device, dtype) -> dict:
    """Sample-quality figures for ``cifargen eval``; each missing piece is one line on stderr, never an error."""
    def note(line: str) -> None:
        print(line, file=sys.stderr)

    figures = {}
    if args.classifier and not (Path(args.classifier) / WEIGHTS).is_file():
        raise ConfigError(f"--classifier {args.classifier}: no {WEIGHTS} there; "
                          "train one with: cifargen classifier train --out DIR")
    classifier, reason = find_reference_classifier(test_set, args.classifier, device)
    if classifier is None:
        note(f"sample-quality figures skipped: {reason}")
    else:
        figures["quality"] = quality_report(model, classifier, test_set, device, dtype, n=args.quality_samples,
                                            train_set=train_set)
        if "skipped" in figures["quality"]:
            note(f"sample-quality figures skipped: {figures['quality']['skipped']}")
    inception = inception_metrics(model, test_set, device, args.inception_weights, n=args.quality_samples, log=note)
    figures.update(inception or {})
    return figures


def run_sample(args: argparse.Namespace) -> None:
    """``cifargen sample``: write sample grids from a trained model."""
    device = resolve_device(args.device)
    model = load(export_best_model(args.run, device) if Path(args.run).is_dir() else args.run, device)
    if not model_kind(model.kind).generative:
        raise ConfigError(f"{args.run} holds a {model.kind}, which does not generate images; "
                          f"pass a {'/'.join(GENERATORS)} run")
    prior = args.prior or default_prior(model)
    draw_samples(model, 1, args.seed, prior)  # a prior the model lacks is refused before anything is said or made
    try:  # a bad --out is refused before anything is said or drawn
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {args.out} ({exc.strerror or exc}); choose a writable folder") from None
    print(f"sampling the {prior} prior" + (" (z ~ N(0, I))" if prior == "standard" else ""), file=sys.stderr)
    try:
        paths = write_samples(model, Path(args.out), args.n, args.seed, args.interpolate, prior)
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {args.out} ({exc.strerror or exc}); choose a writable folder") from None
    for path in paths:
        print(path)
