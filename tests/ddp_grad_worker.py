"""Run under torchrun by test_distributed.py: one VAE step on this rank's shard; saves the gradients."""

import sys

import torch
import torch.distributed as dist

from cifargen import default_config
from cifargen.recipes.vae import VAERecipe
from cifargen.training import setup_runtime


def make_recipe(config):
    device, dtype = setup_runtime(config)
    recipe = VAERecipe(config, tuple("abcdefghij"), device, dtype, steps_per_epoch=10)
    recipe.start_epoch(0)  # lambda = 0: the loss is the reconstruction loss alone
    recipe.train()
    for module in recipe.model.modules():  # running statistics: no per-rank batch statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    torch.nn.init.constant_(recipe.model.encoder.log_var.bias, -100.0)  # no sampling noise
    return recipe


def global_batch(size=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(size, 3, 32, 32, generator=g), torch.randint(10, (size,), generator=g)


def gradients(recipe):
    return {name: p.grad.detach().clone() for name, p in recipe.model.named_parameters()}


if __name__ == "__main__":
    config = default_config("vae", precision="fp32", threads=1, batch_size=8)
    recipe = make_recipe(config)
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = global_batch()
    recipe.train_step(x[rank::world].contiguous(memory_format=torch.channels_last), y[rank::world])
    torch.save(gradients(recipe), f"{sys.argv[1]}/grads{rank}.pt")
    dist.destroy_process_group()
