"""Training throughput of cifargen against the assignment-style loop, side by side, in one run.

    python benchmarks/throughput.py --quick                 # under a minute on 2 CPU cores
    python benchmarks/throughput.py --json results/throughput.json

For each model (VAE, CVAE, AC-GAN, default architecture and batch size) it times

- ours: the cifargen recipe's train_step fed by BatchLoader (uint8 split in memory, batches by
  indexing, channels_last, bf16 autocast where the hardware has it, fused Adam, no host sync);
- reference: the same networks and losses driven the way the assignment template does it: a
  torch.utils.data.DataLoader over a Dataset that converts one image at a time to a float tensor,
  2 worker processes, fp32, a default Adam, ``loss.item()`` every step, no compile.

Both run the same network classes (cifargen's faster dropout mask and GroupNorm sizes help the
reference too; its weights and activations stay in the standard memory layout) in one process,
so process-wide settings (threads, glibc's malloc keeping freed blocks) are shared as well: the
ratio measures the loop, the precision and the memory layout.
Ours and reference alternate, repeat by repeat, to cancel machine drift; the median is reported.
Data: CIFAR-10 from --data-dir when present, else random images of the same shape (``--synthetic``).

It also counts the floating-point operations of one of our steps (convolutions and matrix
products, forward and backward, by ``torch.utils.flop_counter``) and reports the rate ours reaches,
and its fraction of the device's peak where that is known (``--peak-tflops``, or the bf16 dense
peak of a recognised NVIDIA GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cifargen.data import BatchLoader, ImageDataset, has_cifar10, load_cifar10
from cifargen.losses import adversarial_loss, auxiliary_loss, kl_per_sample, reconstruction_terms
from cifargen.models.layers import Unflatten
from cifargen.registry import default_config, model_kind
from cifargen.training import setup_runtime

MODELS = ("vae", "cvae", "acgan")

# Dense bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s (half the "with sparsity" figures),
# matched against torch.cuda.get_device_name in this order; None: a variant whose peak we do not list.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.5), ("H100 NVL", None), ("H100", 989.4), ("H200 NVL", None), ("H200", 989.4),
                    ("A100", 312.0))


class PerImageDataset(torch.utils.data.Dataset):
    """The template's Dataset: one HWC uint8 image at a time to a CHW float tensor (ToTensor)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = torch.from_numpy(self.images[i].astype(np.float32) / 255.0).permute(2, 0, 1)
        return image, int(self.labels[i])


def in_standard_layout(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in the template's memory format, the standard (contiguous) one, activations included."""
    module.to(memory_format=torch.contiguous_format)
    for layer in module.modules():
        if isinstance(layer, Unflatten):
            layer.memory_format = torch.contiguous_format
    return module


def reference_step_fn(model_name: str, recipe, device):
    """One fp32 step with the same networks and losses, written plainly, returning Python floats."""
    if model_name in ("vae", "cvae"):
        model, optimizer = recipe.model, torch.optim.Adam(recipe.model.parameters(), lr=recipe.config.lr)

        def step(x, y):
            x, y = x.to(device), y.to(device)
            out, logits = model(x, y, return_logits=True)
            rec = reconstruction_terms(x, logits)["rec"].mean()
            loss = rec + 1e-4 * kl_per_sample(out.mu, out.log_var).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()
        return step

    generator, discriminator = recipe.generator, recipe.discriminator
    opt_g = torch.optim.Adam(generator.parameters(), lr=recipe.config.lr, betas=recipe.config.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=recipe.config.lr, betas=recipe.config.betas)
    latent_dim, num_classes = recipe.gan.config.latent_dim, recipe.gan.config.num_classes

    def step(x, y):
        x, y = x.to(device), y.to(device)
        b = x.shape[0]
        z, y_fake = torch.randn(b, latent_dim, device=device), torch.randint(num_classes, (b,), device=device)
        fake = generator(z, y_fake)
        adv_real, cls_real = discriminator(x)
        adv_fake, cls_fake = discriminator(fake.detach())
        d_loss = (adversarial_loss(adv_real, True) + adversarial_loss(adv_fake, False)
                  + auxiliary_loss(cls_real, y) + auxiliary_loss(cls_fake, y_fake))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        adv, cls = discriminator(fake)
        g_loss = adversarial_loss(adv, True) + auxiliary_loss(cls, y_fake)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        return g_loss.item() + d_loss.item()
    return step


def time_ours(recipe, dataset: ImageDataset, batch_size: int, steps: int, warmup: int) -> float:
    loader = BatchLoader(dataset, batch_size, recipe.device, shuffle=True, seed=0)
    recipe.start_epoch(1)
    recipe.train()
    batches = iter(loader)
    for _ in range(warmup):
        recipe.train_step(*next(batches))
    start = time.perf_counter()
    done = 0
    out = None
    for _ in range(steps):
        x, y = next(batches)
        out = recipe.train_step(x, y)
        done += x.shape[0]
    float(next(iter(out.values())))  # the only host sync: wait for the queued work
    return done / (time.perf_counter() - start)


def time_reference(step, images: np.ndarray, labels: np.ndarray, batch_size: int, steps: int, warmup: int) -> float:
    loader = torch.utils.data.DataLoader(PerImageDataset(images, labels), batch_size=batch_size, shuffle=True,
                                         num_workers=2)
    batches = iter(loader)
    for _ in range(warmup):
        step(*next(batches))
    start = time.perf_counter()
    done = 0
    for _ in range(steps):
        x, y = next(batches)
        step(x, y)
        done += x.shape[0]
    return done / (time.perf_counter() - start)


def step_flops(recipe, dataset: ImageDataset, batch_size: int) -> int:
    """Floating-point operations of one training step (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    recipe.start_epoch(1)
    recipe.train()
    x, y = next(iter(BatchLoader(dataset, batch_size, recipe.device, shuffle=False)))
    counter = FlopCounterMode(display=False)
    with counter:
        recipe.train_step(x, y)
    return counter.get_total_flops()


def known_peak_tflops(device: torch.device, dtype) -> float | None:
    """The bf16 dense peak of a recognised CUDA GPU, else None (CPUs' peaks are not published per core)."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops
    return None


def load_images(data_dir: str | None, n: int) -> ImageDataset:
    if data_dir and has_cifar10(data_dir):
        return load_cifar10(data_dir, train=True, download=False).head(n)
    generator = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                        torch.randint(0, 10, (n,), generator=generator), tuple(str(i) for i in range(10)))


def benchmark(models, data_dir, steps, warmup, repeats, device, max_batch=None, precision="auto", log=print,
              peak_tflops: float | None = None) -> dict:
    results = {}
    for name in models:
        config = default_config(name, device=device, progress=False, precision=precision)
        device_obj, dtype = setup_runtime(config)
        batch = min(config.batch_size, max_batch or config.batch_size)
        dataset = load_images(data_dir, batch * (warmup + steps + 1) * 2)
        hwc = dataset.images.permute(0, 2, 3, 1).numpy()
        labels = dataset.labels.numpy()
        recipe_class = model_kind(name).recipe_class
        steps_per_epoch = len(dataset) // batch  # only the schedules' shape depends on it; they are not stepped here
        ours_recipe = recipe_class(config, dataset.class_names, device_obj, dtype, steps_per_epoch)
        reference_recipe = recipe_class(config, dataset.class_names, device_obj, None, steps_per_epoch)
        for module in reference_recipe.modules.values():
            in_standard_layout(module)
        reference = reference_step_fn(name, reference_recipe, device_obj)
        flops = step_flops(ours_recipe, dataset, batch)
        ours_runs, reference_runs = [], []
        for _ in range(repeats):
            ours_runs.append(time_ours(ours_recipe, dataset, batch, steps, warmup))
            reference_runs.append(time_reference(reference, hwc, labels, batch, steps, warmup))
        ours, ref = statistics.median(ours_runs), statistics.median(reference_runs)
        results[name] = {"ours_img_s": round(ours, 2), "reference_img_s": round(ref, 2), "ratio": round(ours / ref, 2),
                         "batch_size": batch, "precision": str(dtype or torch.float32).replace("torch.", ""),
                         "device": str(device_obj), "threads": torch.get_num_threads(), "repeats": repeats,
                         "steps": steps, "ours_gflop_per_step": round(flops / 1e9, 2),
                         "ours_tflop_s": round(tflop_s := flops / batch * ours / 1e12, 4)}
        peak = peak_tflops or known_peak_tflops(device_obj, dtype)
        rate = f"{tflop_s:.3f} TFLOP/s"
        if peak:
            results[name].update(peak_tflops=peak, peak_fraction=round(tflop_s / peak, 4))
            rate += f", {100 * tflop_s / peak:.1f}% of {peak:g}"
        log(f"{name:6s} ours {ours:8.1f} img/s | reference {ref:8.1f} img/s | ratio {ours / ref:5.2f} "
            f"(batch {batch}, {results[name]['precision']}, median of {repeats}; ours {flops / 1e9:.1f} GFLOP/step, {rate})")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="few steps, batch at most 64: under a minute on 2 CPU cores")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 root (default: random images)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="precision of our loop (the reference is always fp32)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (median reported)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak in TFLOP/s at our precision, for the fraction reached "
                             "(default: known for recent NVIDIA GPUs in bf16, else not reported)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    steps = args.steps or (3 if args.quick else 30)
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = 1 if args.quick else 3
    started = time.perf_counter()
    results = benchmark(args.models, args.data_dir, steps, warmup, repeats, args.device,
                        max_batch=64 if args.quick else None, precision=args.precision, peak_tflops=args.peak_tflops)
    print(f"total {time.perf_counter() - started:.1f}s", file=sys.stderr)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
