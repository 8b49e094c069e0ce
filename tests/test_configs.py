import dataclasses
import json
from pathlib import Path

import pytest

from cifargen.configs import config_from_dict
from cifargen.errors import ConfigError
from cifargen.modelfile import build_model
from cifargen.models import ACGANConfig, VAEConfig
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
    with pytest.raises(ConfigError, match="attention_heads.*newer cifargen: upgrade"):
        config_from_dict(VAEConfig, saved)
    with pytest.raises(ConfigError, match="attention_heads"):
        build_model("vae", saved)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/config.json")), ids=lambda p: p.parent.name)
def test_every_committed_model_file_configuration_builds(path):
    saved = json.loads(path.read_text())
    model = build_model(saved["kind"], saved["arch"])
    assert model.kind == saved["kind"]
