import json

import pytest
import torch

from cifargen import default_config, load, save_model, train
from cifargen.cli import main
from cifargen.errors import ConfigError
from cifargen.models import ACGAN, CVAE, VAE, ACGANConfig, VAEConfig

TINY = dict(limit_train=128, limit_test=60, progress=False, threads=2, epochs=1)


@pytest.mark.parametrize("model", [VAE(VAEConfig(width=8, latent_dim=8)), CVAE(VAEConfig(width=8, latent_dim=8)),
                                   ACGAN(ACGANConfig(width=8, d_width=8, latent_dim=8))])
def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    model.eval()
    save_model(model, tmp_path, [str(i) for i in range(10)])
    loaded = load(tmp_path)
    z, y = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    if model.kind == "acgan":
        assert torch.equal(model.generator(z, y), loaded.generator(z, y))
        x = torch.rand(4, 3, 32, 32)
        assert all(torch.equal(a, b) for a, b in zip(model.discriminator(x), loaded.discriminator(x)))
    else:
        assert torch.equal(model.decode(z, y if model.conditional else None),
                           loaded.decode(z, y if loaded.conditional else None))
    assert loaded.class_names == tuple(str(i) for i in range(10)) and type(loaded) is type(model)


def test_loading_bad_files_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no model file"):
        load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04garbage")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vae", "arch": {}}))
    with pytest.raises(ConfigError, match="damaged"):
        load(tmp_path)


@pytest.mark.parametrize("model", ["vae", "cvae", "acgan"])
def test_eval_reproduces_metrics_json(model, cifar_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(default_config(model, data_dir=str(cifar_root), out=str(run), **{**TINY, "epochs": 2}))
    saved = json.loads((run / "metrics.json").read_text())
    assert (run / "model.safetensors").is_file() and (run / "config.json").is_file()
    confusion = ["--confusion", str(tmp_path / "confusion.png")] if model == "acgan" else []
    assert main(["eval", str(run), "--json", *confusion]) == 0
    figures = json.loads(capsys.readouterr().out)
    # The model file holds the AC-GAN's moving averages; the trained weights' accuracy_raw stays in metrics.json.
    reproducible = {key: value for key, value in saved["best"].items() if key != "accuracy_raw"}
    assert ("accuracy_raw" in saved["best"]) == (model == "acgan") and reproducible
    for key, value in reproducible.items():
        assert figures[key] == pytest.approx(value, abs=1e-4), key
    assert figures["test_images"] == 60
    if model == "acgan":
        assert (tmp_path / "confusion.png").is_file() and len(figures["confusion"]) == 10
        assert sum(map(sum, figures["confusion"])) == 60
    else:
        assert main(["eval", str(run), "--confusion", str(tmp_path / "confusion.png")]) == 2
        assert "no class predictions to plot" in capsys.readouterr().err
