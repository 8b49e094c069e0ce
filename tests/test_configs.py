import dataclasses
import json
import re
from pathlib import Path

import pytest

from cifargen.configs import config_from_dict
from cifargen.errors import ConfigError
from cifargen.modelfile import build_model, load, save_model
from cifargen.models import ACGAN, VAE, ACGANConfig, VAEConfig
from cifargen.recipes import default_config
from cifargen.recipes.acgan import ACGANTrainConfig
from cifargen.recipes.vae import VAETrainConfig

RESULTS = Path(__file__).resolve().parents[1] / "results"


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


def test_a_missing_field_takes_its_value_from_before_the_field_or_its_default():
    saved = round_trip(ACGANConfig())
    del saved["norm_group_size"], saved["dropout"]
    restored = config_from_dict(ACGANConfig, saved)
    assert restored.norm_group_size is None  # ACGANConfig.VALUES_BEFORE_FIELD
    assert restored.dropout == ACGANConfig().dropout


def test_an_unknown_setting_is_refused_with_the_fix():
    saved = round_trip(VAEConfig())
    saved["attention_heads"] = 4
    with pytest.raises(ConfigError, match="attention_heads.*another cifargen version.*upgrade cifargen"):
        config_from_dict(VAEConfig, saved)
    with pytest.raises(ConfigError, match="attention_heads"):
        build_model("vae", saved)


def test_an_ac_gan_discriminator_saved_with_batch_norm_or_before_any_norm_setting_keeps_it():
    saved = round_trip(ACGANConfig())
    del saved["norm"], saved["norm_group_size"]
    assert config_from_dict(ACGANConfig, {**saved, "batch_norm": True}).norm == "batch"
    assert config_from_dict(ACGANConfig, {**saved, "batch_norm": False}).norm == "none"
    assert config_from_dict(ACGANConfig, saved).norm == "none"  # the discriminator before normalisation
    discriminator_norms = {type(m).__name__ for m in build_model("acgan", {**saved, "batch_norm": True}).discriminator.modules()}
    assert "BatchNorm2d" in discriminator_norms and "GroupNorm" not in discriminator_norms


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


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/config.json")), ids=lambda p: p.parent.name)
def test_every_committed_model_file_configuration_builds(path):
    saved = json.loads(path.read_text())
    model = build_model(saved["kind"], saved["arch"])
    assert model.kind == saved["kind"]


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/metrics.json")), ids=lambda p: p.parent.name)
def test_every_committed_run_configuration_reads_back(path):
    saved = json.loads(path.read_text())["config"]
    default = default_config(saved["model"])
    restored = config_from_dict(type(default), saved)
    assert restored.model == saved["model"] and restored.epochs == saved["epochs"]
