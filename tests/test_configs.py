import dataclasses
import json
from pathlib import Path
import re

import pytest
import torch

from cifargen.configs import config_from_dict, flatten, read_config_file, with_settings
from cifargen.errors import ConfigError
from cifargen.modelfile import build_model, load, save_model
from cifargen.models import ACGAN, VAE, ACGANConfig, VAEConfig
from cifargen.registry import model_kind
from cifargen.recipes.acgan import ACGANTrainConfig
from cifargen.recipes.vae import VAETrainConfig

def round_trip(config):
    return json.loads(json.dumps(dataclasses.asdict(config)))


@pytest.mark.parametrize("config", [VAETrainConfig(), ACGANTrainConfig(), ACGANConfig(), VAEConfig(latent_dim=8)])
def test_a_saved_configuration_reads_back_equal(config):
    assert config_from_dict(type(config), round_trip(config)) == config


def test_lists_become_tuples_and_nested_configurations_are_rebuilt():
    saved = round_trip(ACGANTrainConfig())
    restored = config_from_dict(ACGANTrainConfig, saved)
    assert isinstance(restored.arch, ACGANConfig)
    assert all(not isinstance(v, list) for v in dataclasses.asdict(restored).values())


def test_a_missing_field_takes_its_default():
    saved = round_trip(ACGANConfig(dropout=0.1))
    del saved["dropout"]
    assert config_from_dict(ACGANConfig, saved).dropout == ACGANConfig().dropout


def test_an_ac_gan_run_saved_before_a_setting_existed_reads_back_as_the_run_it_was():
    """Runs saved before ema_decay and fake_class_weight existed had no averages and a class loss on
    generated images; before mode_seeking, lr_decay_from and real_class_weight, no mode seeking, a
    constant learning rate and a real-image class loss of weight 1. Reading them with today's
    defaults would resume or repeat another recipe."""
    saved = round_trip(ACGANTrainConfig(epochs=20))
    del saved["ema_decay"], saved["fake_class_weight"]
    old = config_from_dict(ACGANTrainConfig, saved)
    assert (old.ema_decay, old.fake_class_weight, old.epochs) == (0.0, 1.0, 20)
    del saved["mode_seeking"], saved["lr_decay_from"], saved["real_class_weight"]
    older = config_from_dict(ACGANTrainConfig, saved)
    assert (older.mode_seeking, older.lr_decay_from, older.real_class_weight) == (0.0, 1.0, 1.0)
    del saved["adversarial"]  # a field whose default has not changed still takes the default
    assert config_from_dict(ACGANTrainConfig, saved).adversarial == ACGANTrainConfig().adversarial
    today = ACGANTrainConfig()
    assert (today.ema_decay, today.fake_class_weight, today.mode_seeking, today.lr_decay_from) == (0.999, 0.0, 2.5, 0.5)
    assert (today.real_class_weight, today.class_label_smoothing) == (10.0, 0.1)
    assert today.arch.class_hidden == 512


def test_an_ac_gan_saved_with_a_linear_class_head_reads_back_and_loads_as_it_was(tmp_path):
    """Models and run files saved before class_hidden existed have a linear class head; today's
    default is a two-layer one. Reading them must give the linear head, and the weights must load."""
    saved = round_trip(ACGANTrainConfig(epochs=20, arch=ACGANConfig(class_hidden=0, d_width=8, width=8)))
    del saved["arch"]["class_hidden"]
    assert config_from_dict(ACGANTrainConfig, saved).arch.class_hidden == 0
    run_file = tmp_path / "config.json"
    run_file.write_text(json.dumps({"kind": "acgan", "arch": saved["arch"], "training": saved}))
    from cifargen.cli import build_parser, config_from_args
    config = config_from_args(build_parser().parse_args(["train", "acgan", "--config", str(run_file)]))
    assert (config.arch.class_hidden, config.arch.d_width, config.epochs) == (0, 8, 20)

    model = ACGAN(ACGANConfig(class_hidden=0, d_width=8, width=8))
    save_model(model, tmp_path / "run", [str(i) for i in range(10)], training=dataclasses.asdict(ACGANTrainConfig()))
    model_config = tmp_path / "run" / "config.json"
    written = json.loads(model_config.read_text())
    del written["arch"]["class_hidden"]
    model_config.write_text(json.dumps(written))
    loaded = load(tmp_path / "run")
    assert loaded.config.class_hidden == 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_an_ac_gan_run_saved_before_class_label_smoothing_keeps_hard_labels():
    """results/acgan-class-weight-3-mode-seeking-0.6 (the default of 2026-11-25) predates the
    smoothing: its config.json has no class_label_smoothing and must configure hard labels."""
    run = Path(__file__).resolve().parents[1] / "results/acgan-class-weight-3-mode-seeking-0.6/config.json"
    saved = json.loads(run.read_text())["training"]
    assert "class_label_smoothing" not in saved
    old = config_from_dict(ACGANTrainConfig, read_config_file(run, ACGANTrainConfig))
    assert (old.class_label_smoothing, old.real_class_weight, old.mode_seeking) == (0.0, 3.0, 0.6)
    assert old.arch.class_hidden == 0  # and a linear class head, from before class_hidden existed
    assert old.epochs == 30 and old.ema_decay == 0.999


RUN_FILES = sorted(p for p in (Path(__file__).resolve().parents[1] / "results").glob("*/*.json")
                   if p.name == "config.json" or p.name.startswith("metrics"))


@pytest.mark.parametrize("run_file", RUN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_run_file_configures_its_run(run_file):
    """Each results/*/config.json and metrics.json works as --config for its own model; their
    machine paths are blanked to null, which must read as "not recorded" (the default)."""
    from cifargen.cli import build_parser, config_from_args

    saved = json.loads(run_file.read_text())
    training = saved["training"] if "training" in saved else saved["config"]
    command = ["classifier", "train"] if training["model"] == "classifier" else ["train", training["model"]]
    args = build_parser().parse_args([*command, "--config", str(run_file), "--data-dir", "elsewhere"])
    args.model = training["model"]  # as main() sets it for `classifier train`
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.seed) == (training["epochs"], training["batch_size"], training["seed"])
    assert config.data_dir == "elsewhere"


def test_a_null_in_a_run_file_keeps_the_default_only_where_the_setting_cannot_be_none(tmp_path):
    training = round_trip(ACGANTrainConfig(d_lr=1e-3, epochs=7))
    training["data_dir"], training["d_lr"] = None, None  # text (blanked) and text-or-None (recorded as None)
    run_file = tmp_path / "config.json"
    run_file.write_text(json.dumps({"kind": "acgan", "arch": training["arch"], "training": training}))
    settings = read_config_file(run_file, ACGANTrainConfig)
    assert "data_dir" not in settings and settings["d_lr"] is None and settings["epochs"] == 7


def test_the_oldest_committed_ac_gan_run_configures_the_recipe_it_ran():
    """results/acgan-15-epochs-constant-lr predates most AC-GAN settings; docs/RESULTS.md states its
    recipe: 15 epochs, constant learning rate, class weight 1, no mode seeking, 8 groups, dropout."""
    from cifargen.cli import build_parser, config_from_args

    run = Path(__file__).resolve().parents[1] / "results/acgan-15-epochs-constant-lr/metrics.json"
    config = config_from_args(build_parser().parse_args(["train", "acgan", "--config", str(run)]))
    assert (config.epochs, config.lr_decay_from, config.real_class_weight, config.mode_seeking) == (15, 1.0, 1.0, 0.0)
    assert (config.fake_class_weight, config.ema_decay) == (1.0, 0.0)
    assert (config.arch.norm_group_size, config.arch.dropout) == (None, 0.25)


def test_a_config_file_of_an_older_run_configures_that_run(tmp_path):
    from cifargen.cli import build_parser, config_from_args

    training = round_trip(ACGANTrainConfig(epochs=20))
    del training["ema_decay"], training["fake_class_weight"]
    run_file = tmp_path / "config.json"
    run_file.write_text(json.dumps({"kind": "acgan", "arch": training["arch"], "training": training}))
    assert read_config_file(run_file, ACGANTrainConfig)["ema_decay"] == 0.0
    config = config_from_args(build_parser().parse_args(["train", "acgan", "--config", str(run_file)]))
    assert (config.ema_decay, config.fake_class_weight, config.epochs) == (0.0, 1.0, 20)
    # A hand-written file says only what it changes: the rest stays the default.
    hand_written = tmp_path / "short.toml"
    hand_written.write_text("epochs = 5\n")
    config = config_from_args(build_parser().parse_args(["train", "acgan", "--config", str(hand_written)]))
    assert (config.ema_decay, config.fake_class_weight, config.epochs) == (0.999, 0.0, 5)


def test_an_unknown_setting_is_refused_with_the_fix():
    saved = round_trip(VAEConfig())
    saved["attention_heads"] = 4
    with pytest.raises(ConfigError, match="attention_heads.*another cifargen version.*upgrade cifargen"):
        config_from_dict(VAEConfig, saved)
    with pytest.raises(ConfigError, match="attention_heads"):
        build_model("vae", saved)


@pytest.mark.parametrize("values", ["latent_dim", [1, 2], None])
def test_a_saved_configuration_that_is_not_an_object_is_refused(values):
    with pytest.raises(ConfigError, match="must be a JSON object of settings"):
        config_from_dict(VAEConfig, values)


def test_loading_a_model_file_with_an_unknown_setting_names_the_file(tmp_path):
    save_model(VAE(latent_dim=8, width=8), tmp_path, [str(i) for i in range(10)])
    config_path = tmp_path / "config.json"
    saved = json.loads(config_path.read_text())
    saved["arch"]["attention_heads"] = 4
    config_path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=f"{re.escape(str(config_path))}.*attention_heads"):
        load(tmp_path)


def test_an_ac_gan_model_file_round_trips(tmp_path):
    model = ACGAN(latent_dim=8, width=8, d_width=8)
    save_model(model, tmp_path, [str(i) for i in range(10)])
    assert load(tmp_path).config == model.config


@pytest.fixture(params=["vae", "cvae", "acgan", "classifier"])
def saved_run(request, tmp_path):
    """A model file and a run configuration as a run writes them, for each model kind."""
    kind = model_kind(request.param)
    config = kind.default_config(out=str(tmp_path))
    model = kind.model_class(kind.arch_class(width=8))
    save_model(model, tmp_path, [str(i) for i in range(10)], training=config.to_dict())
    return kind, config, tmp_path


def test_a_saved_model_file_configuration_builds_its_kind(saved_run):
    kind, _, folder = saved_run
    saved = json.loads((folder / "config.json").read_text())
    model = build_model(saved["kind"], saved["arch"])
    assert type(model) is kind.model_class and model.config == load(folder).config


def test_a_saved_run_configuration_reads_back_through_the_config_file_reader(saved_run):
    kind, config, folder = saved_run
    settings = read_config_file(folder / "config.json")
    assert "out" not in settings  # where a run went is not part of what it trains
    restored = with_settings(kind.default_config(), flatten(settings))
    assert dataclasses.replace(restored, out=config.out) == config


def test_settings_reach_nested_fields_with_their_types():
    config = with_settings(VAETrainConfig(), {"arch.width": "16", "kl.shape": "linear", "lr_decay_at": "0.25,0.75",
                                              "limit_train": "none", "compile": "true", "lr": "1e-3"})
    assert config.arch.width == 16 and config.kl.shape == "linear" and config.lr_decay_at == (0.25, 0.75)
    assert config.limit_train is None and config.compile is True and config.lr == 1e-3
    acgan = with_settings(ACGANTrainConfig(), {"betas": "[0.0, 0.9]", "arch.norm_group_size": "None", "d_lr": "2e-4"})
    assert acgan.betas == (0.0, 0.9) and acgan.arch.norm_group_size is None and acgan.d_lr == 2e-4
    assert VAETrainConfig().arch.width == 32  # the defaults are untouched


@pytest.mark.parametrize("settings, message", [
    ({"arch.widht": "16"}, "has no setting 'widht'"),
    ({"epochs": "ten"}, "expected a whole number"),
    ({"epochs": "2.5"}, "expected a whole number"),
    ({"compile": "maybe"}, "expected true or false"),
    ({"arch": "16"}, "is a group of settings"),
    ({"lr.value": "1"}, "is not a group of settings"),
    ({"kl.shape": "cubic"}, "geometric"),          # the dataclass's own validation
    ({"arch.latent_dim": "0"}, "latent_dim must be positive"),
])
def test_bad_settings_are_refused_naming_the_setting(settings, message):
    with pytest.raises(ConfigError, match=message):
        with_settings(VAETrainConfig(), settings)


def test_config_files_in_toml_and_json(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 3\nout = "elsewhere"\n[arch]\nwidth = 16\n[kl]\nramp_from = 0.5\n')
    assert read_config_file(toml) == {"epochs": 3, "arch": {"width": 16}, "kl": {"ramp_from": 0.5}}
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"history": [], "config": {"model": "vae", "epochs": 4}}))
    assert read_config_file(metrics) == {"model": "vae", "epochs": 4}
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config_file(broken)
    with pytest.raises(ConfigError, match="cannot read --config"):
        read_config_file(tmp_path / "missing.json")
