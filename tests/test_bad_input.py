"""Every command over a table of bad inputs: each must fail with a non-zero exit status, no
traceback and one line on stderr.

What counts as one line: cifargen's own refusals are exactly one line, ``cifargen: error: ...``.
A flag argparse itself refuses (a non-number, a value outside the flag's range, an unknown flag)
gets argparse's standard answer instead: the usage (one or more lines, the first starting with
``usage:``) and then one ``cifargen ...: error: ...`` line.

A row is ``(name, argv, setup)``: ``argv`` may hold placeholders ({run}, {data}, {tmp}, ...) that
``setup(tmp_path, fixtures)`` fills in, after building whatever broken file or folder the row needs.
Add a row to cover a new command or a new kind of bad input.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cifargen.cli import main

GENERATORS = ("vae", "cvae", "acgan")
TRAIN_COMMANDS = [["train", model] for model in GENERATORS] + [["classifier", "train"]]
TINY = ["--epochs", "1", "--limit-train", "64", "--limit-test", "30", "--no-progress", "--width", "8"]


@pytest.fixture(scope="module")
def trained_run(cifar_root, tmp_path_factory):
    """A finished tiny VAE run, copied by the rows that damage it."""
    out = tmp_path_factory.mktemp("run") / "vae"
    assert main(["train", "vae", "--data-dir", str(cifar_root), "--out", str(out), "--latent-dim", "8", "--no-quality",
                 "--threads", "2", *TINY]) == 0
    return out


# --- setups: each builds what its rows need under tmp and returns the placeholders ---------------

def nothing(tmp, fx):
    return {}


def copy_run(tmp, fx):
    run = tmp / "run"
    shutil.copytree(fx["run"], run)
    return {"run": run}


def stopped(run):
    """Make ``run`` look as Ctrl-C or a crash leaves it: best.pt and metrics.json, no model file yet."""
    (run / "model.safetensors").unlink()
    (run / "config.json").unlink()
    return run


def damaged(name, content):
    """A copy of the trained run whose ``name`` holds ``content`` (bytes), or is a folder (None)."""
    def setup(tmp, fx):
        run = copy_run(tmp, fx)["run"]
        (run / name).unlink()
        if content is None:
            (run / name).mkdir()
        else:
            (run / name).write_bytes(content)
        return {"run": run}
    return setup


def config_json_with(**arch):
    """A copy of the trained run whose config.json names another architecture."""
    def setup(tmp, fx):
        run = copy_run(tmp, fx)["run"]
        config = json.loads((run / "config.json").read_text())
        config["arch"].update(arch)
        (run / "config.json").write_text(json.dumps(config))
        return {"run": run}
    return setup


def empty_checkpoint(tmp, fx):
    run = tmp / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    return {"run": run}


def empty_file(tmp, fx):
    (tmp / "empty").write_bytes(b"")
    return {"file": tmp / "empty"}


def config_file(name, text):
    def setup(tmp, fx):
        (tmp / name).write_text(text)
        return {"file": tmp / name}
    return setup


def busy(tmp, fx):
    """A copy of the run whose lock is held by a live process: this test's own."""
    run = copy_run(tmp, fx)["run"]
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    return {"run": run}


def corrupt_data(tmp, fx):
    """A copy of the data whose second training batch and test batch are cut in half."""
    data = tmp / "data"
    shutil.copytree(fx["data"], data)
    for name in ("data_batch_2", "test_batch"):
        path = data / "cifar-10-batches-py" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {"data": data}


def run_and_corrupt_data(tmp, fx):
    return {**copy_run(tmp, fx), **corrupt_data(tmp, fx)}


# --- the table --------------------------------------------------------------------------------

ROWS = []
for cmd in TRAIN_COMMANDS:
    name = " ".join(cmd)
    common = [*cmd, "--data-dir", "{data}", "--out", "{tmp}/out", *TINY]
    ROWS += [
        (f"{name}: negative epochs", [*cmd, "--epochs", "-1"], nothing),
        (f"{name}: NaN lr", [*cmd, "--lr", "nan"], nothing),
        (f"{name}: infinite lr", [*cmd, "--lr", "inf"], nothing),
        (f"{name}: non-number batch size", [*cmd, "--batch-size", "many"], nothing),
        (f"{name}: non-finite lr by --set", [*common, "--set", "lr=nan"], nothing),
        (f"{name}: unknown --set key", [*common, "--set", "arch.nope=1"], nothing),
        (f"{name}: --set without a value", [*common, "--set", "epochs"], nothing),
        (f"{name}: --set of a non-number", [*common, "--set", "batch_size=abc"], nothing),
        (f"{name}: unknown device", [*common, "--device", "foo"], nothing),
        (f"{name}: CUDA device that does not exist", [*common, "--device", "cuda:3"], nothing),
        (f"{name}: data folder that does not exist in a file", [*common[:3], "{file}/data", *common[4:]], empty_file),
        (f"{name}: corrupt CIFAR batch", common, corrupt_data),
        (f"{name}: --config that does not exist", [*common, "--config", "{tmp}/absent.json"], nothing),
        (f"{name}: --config is a folder", [*common, "--config", "{tmp}"], nothing),
        (f"{name}: --config is not JSON", [*common, "--config", "{file}"], config_file("c.json", "{lr: 1")),
        (f"{name}: --config with a NaN lr", [*common, "--config", "{file}"], config_file("c.toml", "lr = nan\n")),
        (f"{name}: --resume an empty checkpoint", [*cmd, "--resume", "{run}", "--data-dir", "{data}"], empty_checkpoint),
        (f"{name}: --resume a file", [*cmd, "--resume", "{file}"], empty_file),
        (f"{name}: out is a file", [*common[:5], "{file}", *common[6:]], empty_file),
        (f"{name}: network too large", [*common, "--set", "arch.width=100000"], nothing),
    ]
ROWS += [
    ("train vae: busy run folder", ["train", "vae", "--data-dir", "{data}", "--out", "{run}", "--overwrite", *TINY], busy),
    ("train vae: --resume a busy run", ["train", "vae", "--resume", "{run}", "--data-dir", "{data}"], busy),
    ("train vae: --out holding a run whose metrics.json is a list", ["train", "vae", "--data-dir", "{data}", "--out",
                                                                     "{run}", *TINY], damaged("metrics.json", b"[]")),
    ("train cvae: a class missing from the training images", ["train", "cvae", "--data-dir", "{data}", "--out",
                                                              "{tmp}/out", *TINY, "--limit-train", "8"], nothing),
    ("train: unknown model", ["train", "gan9000"], nothing),
    ("no command", [], nothing),
]
for cmd in (["eval", "{run}"], ["sample", "{run}", "--out", "{tmp}/samples"], ["fit-prior", "{run}"]):
    name = cmd[0]
    ROWS += [
        (f"{name}: run that does not exist", [cmd[0], "{tmp}/absent", *cmd[2:]], nothing),
        (f"{name}: a folder that is no run", [cmd[0], "{tmp}", *cmd[2:]], nothing),
        (f"{name}: empty model file", cmd, damaged("model.safetensors", b"")),
        (f"{name}: corrupt model file", cmd, damaged("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")),
        (f"{name}: model file is a folder", cmd, damaged("model.safetensors", None)),
        (f"{name}: corrupt config.json", cmd, damaged("config.json", b"{\"kind\": ")),
        (f"{name}: config.json is a folder", cmd, damaged("config.json", None)),
        (f"{name}: config.json of another model", cmd, config_json_with(width=16)),
        (f"{name}: config.json of a network too large", cmd, config_json_with(width=100000)),
        (f"{name}: unknown device", [*cmd, "--device", "foo"], copy_run),
        (f"{name}: MPS device where there is none", [*cmd, "--device", "mps"], copy_run),
    ]
ROWS += [
    ("eval: negative --limit-test", ["eval", "{run}", "--limit-test", "-4"], copy_run),
    ("eval: --limit-test beyond the data", ["eval", "{run}", "--limit-test", "100000"], copy_run),
    ("eval: zero quality samples", ["eval", "{run}", "--quality-samples", "0"], copy_run),
    ("eval: corrupt CIFAR batch", ["eval", "{run}", "--data-dir", "{data}"], run_and_corrupt_data),
    ("eval: --classifier without one", ["eval", "{run}", "--classifier", "{tmp}/none"], copy_run),
    ("eval: --confusion of a vae", ["eval", "{run}", "--no-quality", "--confusion", "{tmp}/c.png"], copy_run),
    ("sample: negative --n", ["sample", "{run}", "--out", "{tmp}/s", "--n", "-5"], copy_run),
    ("sample: NaN --n", ["sample", "{run}", "--out", "{tmp}/s", "--n", "nan"], copy_run),
    ("sample: --out is a file", ["sample", "{run}", "--out", "{file}"], lambda t, f: {**copy_run(t, f), **empty_file(t, f)}),
    ("sample: negative seed", ["sample", "{run}", "--out", "{tmp}/s", "--seed", "-1"], copy_run),
    ("fit-prior: zero components", ["fit-prior", "{run}", "--components", "0"], copy_run),
    ("fit-prior: NaN reg-covar", ["fit-prior", "{run}", "--reg-covar", "nan"], copy_run),
    ("fit-prior: busy run folder", ["fit-prior", "{run}"], busy),
    ("fit-prior: corrupt CIFAR batch", ["fit-prior", "{run}", "--data-dir", "{data}", "--no-quality"],
     run_and_corrupt_data),
    ("fit-prior: a run file, not a folder", ["fit-prior", "{run}/model.safetensors"], copy_run),
    ("fit-prior: corrupt metrics.json", ["fit-prior", "{run}", "--no-quality"], damaged("metrics.json", b"{\"model\": ")),
    ("fit-prior: metrics.json holds a list", ["fit-prior", "{run}", "--no-quality"], damaged("metrics.json", b"[]")),
]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``cifargen argv`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_refusal(code, out, err):
    assert code not in (0, None), err
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.rstrip("\n").splitlines()
    assert lines, "nothing on stderr"
    if lines[0].startswith("usage:"):  # argparse's own answer: the usage, then one error line
        assert all(line.startswith((" ", "usage:")) for line in lines[:-1]), err
        assert lines[-1].startswith("cifargen") and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("cifargen: "), err


@pytest.mark.parametrize("name, argv, setup", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_refused_in_one_line(name, argv, setup, trained_run, cifar_root, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    values = {"tmp": tmp_path, "data": cifar_root, "run": tmp_path / "no-run", "file": tmp_path / "no-file",
              **setup(tmp_path, {"run": trained_run, "data": cifar_root})}
    argv = [arg.format(**values) for arg in argv]
    assert_one_line_refusal(*run_cli(argv, capsys))


def test_a_class_missing_from_the_training_images_is_refused_before_the_first_epoch(cifar_root, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["train", "cvae", "--data-dir", str(cifar_root), "--out", str(out), *TINY,
                            "--limit-train", "8"], capsys)  # the first 8 images hold classes 0-7 only
    assert code == 2 and "class 'ship' has 0" in err and "--set fit_prior=false" in err
    assert not out.exists()  # the run folder it made for the run is gone again: it was empty
    code, _, err = run_cli(["train", "cvae", "--data-dir", str(cifar_root), "--out", str(out), *TINY,
                            "--limit-train", "8", "--set", "fit_prior=false"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["fit-prior", str(out), "--no-quality"], capsys)  # the flags fit-prior has, or none
    assert code == 2 and "class 'ship' has 0; the run was trained without enough images of it" in err
    code, _, err = run_cli(["fit-prior", str(out), "--no-quality", "--components", "2"], capsys)
    assert code == 2 and "use fewer components (--components N)" in err


@pytest.mark.parametrize("command", ["eval", "fit-prior"])
def test_a_mistyped_data_dir_of_a_trained_run_is_refused_without_a_download(command, trained_run, tmp_path, capsys,
                                                                           monkeypatch):
    import cifargen.data

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(cifargen.data, "download_cifar", no_download)
    run = copy_run(tmp_path, {"run": trained_run})["run"]
    typo = tmp_path / "typo"
    code, out, err = run_cli([command, str(run), "--data-dir", str(typo)], capsys)
    assert_one_line_refusal(code, out, err)
    assert f"no CIFAR-10 in {typo}" in err and not typo.exists()


def stopped_run_with_moved_data(tmp, fx):
    """A copy of the trained run as Ctrl-C leaves it (no model file), whose data folder has moved."""
    import torch

    run = stopped(copy_run(tmp, fx)["run"])
    best = torch.load(run / "best.pt", weights_only=True)
    best["config"]["data_dir"] = str(tmp / "moved-away")
    torch.save(best, run / "best.pt")
    moved = tmp / "data-now"
    shutil.copytree(fx["data"], moved)
    return {"run": run, "data": moved}


def test_a_stopped_run_whose_data_moved_is_sampled_and_evaluated_with_the_new_data_dir(trained_run, cifar_root,
                                                                                      tmp_path, capsys):
    values = stopped_run_with_moved_data(tmp_path, {"run": trained_run, "data": cifar_root})
    run, data = values["run"], values["data"]
    code, out, err = run_cli(["sample", str(run), "--out", str(tmp_path / "s"), "--n", "4"], capsys)
    assert code == 0, err  # exporting best.pt needs no data: the checkpoint names the classes
    code, out, err = run_cli(["eval", str(run), "--data-dir", str(data), "--no-quality", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rec"] > 0
    assert not (tmp_path / "moved-away").exists()


def test_a_prior_fitted_to_an_exported_model_stays_when_metrics_json_lags_behind(trained_run, cifar_root, tmp_path,
                                                                                 capsys):
    """best.pt is written before metrics.json: a run killed between the two must not make every later
    command export best.pt again (which would drop the prior fitted since)."""
    from cifargen.api import export_best_model

    run = stopped(copy_run(tmp_path, {"run": trained_run})["run"])
    assert run_cli(["fit-prior", str(run), "--no-quality"], capsys)[0] == 0
    assert "prior" in json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["best_epoch"] = 99  # a metrics.json that lags behind best.pt
    (run / "metrics.json").write_text(json.dumps(metrics))
    export_best_model(run)
    assert "prior" in json.loads((run / "config.json").read_text())


def test_a_train_that_fails_before_writing_leaves_no_empty_run_folder(cifar_root, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert_one_line_refusal(*run_cli(["train", "vae", "--data-dir", str(cifar_root), "--out", str(out), *TINY,
                                      "--limit-train", "100000"], capsys))
    assert not (tmp_path / "new").exists()  # nor the parent it made for it
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    assert_one_line_refusal(*run_cli(["train", "vae", "--data-dir", str(cifar_root), "--out", str(tmp_path / "kept"),
                                      *TINY, "--limit-train", "100000"], capsys))
    assert (tmp_path / "kept").is_dir()


def test_a_refused_fit_prior_leaves_the_model_file_as_it_was(trained_run, tmp_path, capsys):
    run = damaged("metrics.json", b"[]")(tmp_path, {"run": trained_run})["run"]
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert_one_line_refusal(*run_cli(["fit-prior", str(run), "--no-quality"], capsys))
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_a_stopped_run_with_a_damaged_metrics_json_is_still_evaluated(trained_run, tmp_path, capsys):
    run = stopped(damaged("metrics.json", b"[]")(tmp_path, {"run": trained_run})["run"])  # eval exports best.pt
    code, out, err = run_cli(["eval", str(run), "--no-quality", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rec"] > 0


@pytest.mark.parametrize("argv, setup", [
    (["eval", "{run}", "--device", "foo"], copy_run),
    (["sample", "{run}", "--out", "{tmp}/s"], damaged("config.json", b"{\"kind\": ")),
    (["train", "vae", "--epochs", "-1"], nothing),
], ids=["unknown device", "corrupt config.json", "negative epochs"])
def test_the_installed_entry_point_refuses_in_one_line(argv, setup, trained_run, cifar_root, tmp_path):
    values = {"tmp": tmp_path, **setup(tmp_path, {"run": trained_run, "data": cifar_root})}
    result = subprocess.run([sys.executable, "-m", "cifargen", *[a.format(**values) for a in argv]],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert_one_line_refusal(result.returncode, result.stdout, result.stderr)
