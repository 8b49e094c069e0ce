import json

import pytest

from cifargen.cli import build_parser, main
from cifargen.errors import ConfigError


def test_help_lists_models_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "vae" in text and "cvae" in text and "acgan" in text and "--limit-train" in text


def _option_helps(parser, path=()):
    """(command path, option, help) of every option of ``parser`` and its sub-commands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _option_helps(sub, (*path, name))
        elif action.option_strings and action.help:
            yield path, action.option_strings[0], action.help


def test_every_option_states_its_default_once():
    """A help that states its own default gets no second, generated one (``--out``'s used to read
    "(default: visualize/vae, ...) (default: None for vae/cvae/acgan)")."""
    helps = list(_option_helps(build_parser()))
    twice = [(path, option) for path, option, text in helps if text.count("(default") > 1]
    assert twice == []
    by_option = {(path, option): text for path, option, text in helps}
    assert by_option[(("train",), "--lr")].endswith("(default: 0.0005 for vae/cvae; 0.0002 for acgan)")
    classifier_out = by_option[(("classifier", "train"), "--out")]
    assert "vae" not in classifier_out and "(default: the data set's folder" in classifier_out


@pytest.mark.parametrize("argv", [
    ["train", "gan9000"], ["train", "vae", "--epochs", "0"], ["train", "vae", "--batch-size", "-3"],
    ["train", "vae", "--latent-dim", "0"], ["train", "vae", "--lr", "abc"], ["train", "vae", "--kl-ramp-from", "1.5"],
    ["train", "acgan", "--mode-seeking", "-1"],
    ["train", "acgan", "--ema-decay", "1"],
    ["train", "classifier"], ["classifier", "train", "--latent-dim", "8"],
])
def test_bad_flags_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_missing_cuda_is_refused_before_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "vae", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_limit_larger_than_data_and_unwritable_out(cifar_root, tmp_path, capsys):
    assert main(["train", "vae", "--data-dir", str(cifar_root), "--limit-train", "100000", "--out", str(tmp_path / "a")]) == 2
    assert "holds 320" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "vae", "--data-dir", str(cifar_root), "--out", str(blocker / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_train_command_runs_and_prints_summary(cifar_root, tmp_path, capsys):
    code = main(["train", "cvae", "--data-dir", str(cifar_root), "--out", str(tmp_path), "--epochs", "1",
                 "--limit-train", "128", "--limit-test", "60", "--latent-dim", "32", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] == 1 and "rec" in summary["best"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["config"]["arch"]["latent_dim"] == 32 and saved["config"]["model"] == "cvae"


def test_flags_map_onto_config():
    from cifargen.cli import config_from_args

    args = build_parser().parse_args(["train", "vae", "--epochs", "7", "--kl-shape", "linear", "--width", "16",
                                      "--kl-ramp-from", "0", "--no-quality"])
    config = config_from_args(args)
    assert config.epochs == 7 and config.kl.shape == "linear" and config.arch.width == 16 and config.lr == 5e-4
    assert config.kl.ramp_from == 0 and config.quality is False
    args = build_parser().parse_args(["classifier", "train", "--epochs", "3", "--width", "8"])
    args.model = "classifier"
    config = config_from_args(args)
    assert config.model == "classifier" and config.epochs == 3 and config.arch.width == 8
    config = config_from_args(build_parser().parse_args(["train", "acgan", "--d-lr", "1e-3", "--mode-seeking", "0.5",
                                                         "--ema-decay", "0.99"]))
    assert config.d_lr == 1e-3 and config.mode_seeking == 0.5 and config.lr == 2e-4 and config.ema_decay == 0.99
    with pytest.raises(ConfigError, match="--mode-seeking applies to acgan, not vae"):
        config_from_args(build_parser().parse_args(["train", "vae", "--mode-seeking", "1"]))
    for flag, value in (("--kl-shape", "linear"), ("--kl-ramp-from", "0.5")):  # nested settings: the flag's own name
        with pytest.raises(ConfigError, match=f"^{flag} applies to vae/cvae, not acgan$"):
            config_from_args(build_parser().parse_args(["train", "acgan", flag, value]))


def test_planted_checkpoint_runs_nothing(tmp_path, capsys):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(pickle.dumps({"config": Evil()}))
    assert main(["train", "vae", "--resume", str(run_dir)]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_resume_without_a_run_is_refused(tmp_path, capsys):
    assert main(["train", "vae", "--resume", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_refuses_flags_that_change_the_run(cifar_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--data-dir", str(cifar_root), "--limit-train", "64", "--limit-test", "30", "--no-progress"]
    assert main(["train", "vae", "--out", str(run_dir), "--epochs", "1", "--latent-dim", "16", *common]) == 0
    capsys.readouterr()
    for changed in (["--lr", "0.1"], ["--kl-ramp-from", "0.5"], ["--latent-dim", "8"], ["--epochs", "3"]):
        assert main(["train", "vae", "--resume", str(run_dir), *changed, *common]) == 2
        assert "cannot change when resuming" in capsys.readouterr().err


def test_a_run_is_reproduced_from_its_config_file_and_set_reaches_nested_fields(cifar_root, tmp_path, capsys):
    common = ["--data-dir", str(cifar_root), "--no-progress"]
    first = tmp_path / "first"
    assert main(["train", "vae", "--out", str(first), "--epochs", "1", "--limit-train", "64", "--limit-test", "30",
                 "--set", "arch.width=8", "--set", "arch.latent_dim=16", "--set", "fit_prior=false", *common]) == 0
    saved = json.loads((first / "metrics.json").read_text())
    assert saved["config"]["arch"]["width"] == 8 and saved["config"]["fit_prior"] is False
    again = tmp_path / "again"
    assert main(["train", "vae", "--config", str(first / "config.json"), "--out", str(again), *common]) == 0
    strip = lambda m: [{k: v for k, v in e.items() if k != "seconds"} for e in m["history"]]  # noqa: E731
    assert strip(json.loads((again / "metrics.json").read_text())) == strip(saved)
    capsys.readouterr()
    assert main(["train", "cvae", "--config", str(first / "config.json"), "--out", str(tmp_path / "x"), *common]) == 2
    assert "configures vae, not cvae" in capsys.readouterr().err
    assert main(["train", "vae", "--set", "arch.widht=8", "--out", str(tmp_path / "y"), *common]) == 2
    assert "has no setting 'widht'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # refused before anything was created


def test_train_does_not_modify_the_configuration_it_is_given(cifar_root, tmp_path):
    import dataclasses

    from cifargen import default_config, train

    config = default_config("vae", data_dir=str(cifar_root), epochs=1, limit_train=64, limit_test=30, progress=False,
                            out=str(tmp_path / "run"), fit_prior=False)
    before = dataclasses.asdict(config)
    train(config)
    assert dataclasses.asdict(config) == before


@pytest.mark.parametrize("device", ["cuda:3", "mps", "foo"])
@pytest.mark.parametrize("command", [["train", "vae"], ["train", "acgan"], ["classifier", "train"], ["eval", "RUN"],
                                     ["sample", "RUN", "--out", "OUT"], ["fit-prior", "RUN"]])
def test_a_device_that_does_not_exist_is_refused_before_any_data_is_read(command, device, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    missing = tmp_path / "no-data"  # would fail (or start a download) if it were read first
    argv = [str(tmp_path / "no-run") if a == "RUN" else str(tmp_path / "samples") if a == "OUT" else a for a in command]
    argv += ["--device", device] + ([] if command[0] == "sample" else ["--data-dir", str(missing)])
    if command[0] in ("train", "classifier"):
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifargen: ") and len(err.strip().splitlines()) == 1
    assert device in err and str(tmp_path) not in err
    assert not missing.exists() and not (tmp_path / "out").exists() and not (tmp_path / "samples").exists()


def test_eval_refuses_confusion_of_a_vae_before_evaluating(tiny_runs, monkeypatch, capsys):
    import cifargen.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("evaluated before refusing --confusion")

    monkeypatch.setattr(cli, "evaluate_model", never)
    assert main(["eval", str(tiny_runs["vae"]), "--no-quality", "--confusion", "c.png"]) == 2
    assert "--confusion: a vae model has no class predictions" in capsys.readouterr().err


def test_sample_refuses_a_prior_the_model_lacks_before_writing(tiny_runs, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", str(tiny_runs["acgan"]), "--out", str(out), "--prior", "fitted"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifargen: error: an AC-GAN samples only its standard prior") and not out.exists()
