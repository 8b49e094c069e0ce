"""cifargen sample: exactly n images, labelled grids, both priors, interpolations."""

from cifargen import default_config, load, train
from cifargen.cli import main

TINY = dict(epochs=1, limit_train=128, limit_test=60, progress=False, threads=2)


def test_sample_writes_exactly_n_images_labelled_by_class(cifar_root, tmp_path, capsys):
    from PIL import Image

    from cifargen.sampling import draw_samples

    train(default_config("cvae", data_dir=str(cifar_root), out=str(tmp_path / "run"), **TINY))
    model = load(tmp_path / "run")
    for prior in ("standard", "fitted"):
        images, labels = draw_samples(model, 23, seed=0, prior=prior)
        assert images.shape == (23, 3, 32, 32) and labels.tolist() == sorted(i % 10 for i in range(23))
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s"), "--n", "30", "--interpolate"]) == 0
    assert "sampling the fitted prior" in capsys.readouterr().err
    assert Image.open(tmp_path / "s" / "samples.png").size[0] > 0
    assert Image.open(tmp_path / "s" / "interpolation.png").size[0] > 0
    # Too many to label: a plain grid of exactly n cells (20 columns, 4x nearest upscaling).
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "big"), "--n", "250", "--prior", "standard"]) == 0
    assert "sampling the standard prior" in capsys.readouterr().err
    cell = 32 * 4 + 2
    assert Image.open(tmp_path / "big" / "samples.png").size == (20 * cell + 2, 13 * cell + 2)
