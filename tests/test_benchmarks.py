"""The benchmark scripts' own logic (their timings are measured, not tested)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pytest  # noqa: E402
import torch  # noqa: E402

from average_update import main as average_update_main  # noqa: E402
from profile_step import OperatorTimer, describe  # noqa: E402
from profile_step import main as profile_main  # noqa: E402
from time_to_quality import time_to_target  # noqa: E402


def history(values, seconds=60.0):
    return [{"epoch": i + 1, "seconds": seconds, "test": {"rec": v, "accuracy": v}} for i, v in enumerate(values)]


def test_time_to_target_lower_is_better():
    metrics = {"best_metric": "rec", "history": history([0.80, 0.72, 0.689, 0.65])}
    assert time_to_target(metrics, 0.69) == {"epoch": 3, "seconds": 180.0, "value": 0.689}
    assert time_to_target(metrics, 0.60) is None


def test_time_to_target_higher_is_better():
    metrics = {"best_metric": "accuracy", "history": history([0.4, 0.7, 0.6], seconds=30.0)}
    assert time_to_target(metrics, 0.69) == {"epoch": 2, "seconds": 60.0, "value": 0.7}


def test_operator_timer_counts_each_operator_with_its_inputs():
    a = torch.randn(8, 4)
    b = torch.randn(4, 3)
    timer = OperatorTimer()
    with timer:
        torch.mm(a, b)
        torch.mm(a, b)
        torch.relu(a)
    calls = {name: n for (name, _), n in timer.calls.items()}
    assert calls == {"mm": 2, "relu": 1}
    assert timer.calls["mm", "(8, 4)f (4, 3)f"] == 2
    assert all(s >= 0 for s in timer.seconds.values())


def test_describe_names_the_layout():
    x = torch.zeros(2, 3, 4, 5)
    assert describe(x) == "(2, 3, 4, 5)fN"
    assert describe(x.contiguous(memory_format=torch.channels_last)) == "(2, 3, 4, 5)fL"
    assert describe(x[:, :2]) == "(2, 2, 4, 5)fS"
    assert describe(torch.zeros(3, dtype=torch.int64)) == "(3,)i"
    assert describe(torch.zeros(3, dtype=torch.int16)) == "(3,)int16"


def test_profile_step_reports_operators_and_the_convolution_share(tmp_path, capsys):
    out = tmp_path / "profile.txt"
    assert profile_main(["--model", "vae", "--steps", "1", "--precision", "fp32", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "timer ops" in text and "convolution_backward" in text
    assert "convolutions" in text.splitlines()[-1] and "% of operator time" in text


def test_profile_step_refuses_a_bad_step_count():
    with pytest.raises(SystemExit):
        profile_main(["--steps", "0"])


def test_known_peaks_match_the_device_name(monkeypatch):
    from throughput import known_peak_tflops

    cuda = torch.device("cuda")
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", None),
                       ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", None), ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert known_peak_tflops(cuda, torch.bfloat16) == peak
    assert known_peak_tflops(cuda, None) is None  # fp32: the bf16 peak would be the wrong yardstick
    assert known_peak_tflops(torch.device("cpu"), torch.bfloat16) is None


def forward_flops_by_hand(model: torch.nn.Module, *inputs) -> int:
    """2 x multiply-adds of every convolution and linear layer in one forward pass, from their shapes."""
    total = 0

    def count(module, args, out):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * out.numel() * module.in_channels // module.groups * kh * kw
        elif isinstance(module, torch.nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += 2 * args[0].numel() * module.out_channels // module.groups * kh * kw
        elif isinstance(module, torch.nn.Linear):
            total += 2 * out.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return total


def test_step_flops_are_about_three_forward_passes_of_the_network():
    from throughput import load_images, step_flops

    from cifargen.registry import default_config, model_kind
    from cifargen.training import setup_runtime

    config = default_config("vae", device="cpu", precision="fp32", progress=False)
    device, dtype = setup_runtime(config)
    dataset = load_images(None, 16)
    recipe = model_kind("vae").recipe_class(config, dataset.class_names, device, dtype, steps_per_epoch=2)
    forward = forward_flops_by_hand(recipe.model, dataset.images[:8].float() / 255, dataset.labels[:8])
    counted = step_flops(recipe, dataset, 8)
    # forward + backward (twice the forward, less the first layer's input gradient) + the SSIM filters
    assert 2.8 * forward < counted < 3.2 * forward


def test_benchmark_reports_both_loops_their_ratio_and_the_peak_fraction():
    from throughput import benchmark

    results = benchmark(["vae"], None, steps=1, warmup=0, repeats=1, device="cpu", max_batch=4,
                        log=lambda line: None, peak_tflops=2.0)["vae"]
    ours, reference = results["ours_img_s"], results["reference_img_s"]
    # the ratio is rounded to 0.01 and was computed before the figures were rounded to 0.01 img/s
    rounding = 0.005 + ours / reference * (0.005 / ours + 0.005 / reference)
    assert results["ratio"] == pytest.approx(ours / reference, abs=rounding + 1e-9)
    assert results["ours_gflop_per_step"] > 0
    assert results["peak_fraction"] == pytest.approx(results["ours_tflop_s"] / 2.0, rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("model_name", ["vae", "acgan"])
def test_the_reference_runs_every_layer_in_the_standard_layout(model_name):
    from throughput import in_standard_layout

    from cifargen.models import ACGAN, VAE

    model = (VAE() if model_name == "vae" else ACGAN()).to(memory_format=torch.channels_last)
    in_standard_layout(model)
    layouts = set()

    def record(module, args, out):
        layouts.add(out.is_contiguous())

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(record)
            assert m.weight.is_contiguous()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    with torch.no_grad():
        if model_name == "vae":
            model(x, y)
        else:
            model.discriminator(model.generator(torch.randn(2, model.config.latent_dim), y))
    assert layouts == {True}


def test_prior_sweep_fits_each_setting_on_the_same_codes(cifar_root, tmp_path):
    import json

    from cifargen import default_config, train
    from prior_sweep import main as sweep_main

    run = tmp_path / "run"
    train(default_config("cvae", data_dir=str(cifar_root), out=str(run), epochs=1, limit_train=200, limit_test=60,
                         progress=False, threads=2, fit_prior=False))
    out = tmp_path / "sweep.json"
    assert sweep_main([str(run), "--grid", "1:full:1e-4", "2:diag:1e-3", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["per_class"] is True and table["codes"] == 200 and table["test_codes"] == 60
    assert [row["setting"] for row in table["rows"]] == ["1:full:1e-4", "2:diag:1e-3"]
    assert all(row["train_log_likelihood"] > row["test_log_likelihood"] for row in table["rows"])  # fitted to train


def test_average_update_counts_every_weight_and_buffer_of_both_networks(capsys):
    from cifargen.models.acgan import ACGAN

    assert average_update_main(["--steps", "1", "--updates", "2", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    gan = ACGAN()
    expected = sum(t.numel() for t in (*gan.parameters(), *gan.buffers()))
    assert f"({expected:,} values," in out
    assert "% of the step" in out


def run_gpu_benchmarks(*args, tmp_path):
    """benchmarks/gpu_benchmarks.sh with this interpreter first on PATH and scratch folders in tmp_path."""
    import os
    import subprocess

    env = {**os.environ, "TMPDIR": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_benchmarks.sh"
    return subprocess.run(["bash", str(script), *args], cwd=script.parents[1], env=env, capture_output=True, text=True)


def test_gpu_benchmarks_probes_runs_each_set_of_flags_and_keeps_its_metrics(cifar_root, tmp_path):
    import json

    tiny = "--epochs 1 --limit-train 64 --limit-test 20 --no-quality --set arch.width=8 --set arch.d_width=8"
    out = tmp_path / "out"
    done = run_gpu_benchmarks("probes", str(cifar_root), str(out), "300", tiny, f"{tiny} --set cutout=8",
                              tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = (json.loads((out / f"metrics_probe_{i}.json").read_text()) for i in (1, 2))
    assert (first["config"]["cutout"], second["config"]["cutout"]) == (0, 8)
    assert first["epochs_completed"] == second["epochs_completed"] == 1
    assert (out / "probe_2.flags").read_text().strip() == f"probe 2: {tiny} --set cutout=8"
    assert "probe 2 best" in done.stdout


def test_gpu_benchmarks_probes_without_flags_says_what_to_give(tmp_path):
    done = run_gpu_benchmarks("probes", str(tmp_path), str(tmp_path / "out"), "60", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "at least one quoted set of flags" in done.stderr


def test_publish_run_copies_the_cited_files_and_drops_machine_paths(tmp_path):
    import json

    from publish_run import main as publish_main

    run = tmp_path / "run"
    run.mkdir()
    for name in ["E1.png", "E2.png", "E10.png", "E20.png", "E29.png", "E30.png", "loss.png", "best.pt"]:
        (run / name).write_bytes(b"png")
    (run / "metrics.json").write_text(json.dumps({"config": {"data_dir": "/home/me/data", "out": "/home/me/run",
                                                             "epochs": 30}, "note": "a/b is fine"}))
    (run / "eval.json").write_text(json.dumps({"source": "/home/me/run", "accuracy": 0.85}))
    dest = tmp_path / "results" / "acgan"
    assert publish_main([str(run), str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["E1.png", "E10.png", "E20.png", "E30.png", "eval.json",
                                                      "loss.png", "metrics.json"]
    assert json.loads((dest / "metrics.json").read_text()) == {"config": {"data_dir": None, "out": None, "epochs": 30},
                                                                "note": "a/b is fine"}
    assert json.loads((dest / "eval.json").read_text()) == {"source": None, "accuracy": 0.85}
    # a path under another key is refused, and nothing is written
    (run / "config.json").write_text(json.dumps({"tensorboard": "/home/me/tb"}))
    other = tmp_path / "results" / "other"
    assert publish_main([str(run), str(other)]) == 1 and not other.exists()
    assert publish_main([str(tmp_path / "missing"), str(other)]) == 1
