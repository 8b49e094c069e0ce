"""The VAE/CVAE recipe."""

import pytest
import torch

from cifargen import default_config


@pytest.mark.parametrize("epochs, steps_per_epoch, expected", [(30, 782, 500), (5, 79, 20), (1, 2, 1)])
def test_the_warm_up_scales_with_short_runs_and_keeps_the_default(epochs, steps_per_epoch, expected):
    from cifargen.recipes.vae import VAERecipe

    config = default_config("vae", epochs=epochs, progress=False)
    recipe = VAERecipe(config, tuple("abcdefghij"), torch.device("cpu"), None, steps_per_epoch=steps_per_epoch)
    assert recipe.step_schedulers["warmup"].total_iters == expected
