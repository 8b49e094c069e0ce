"""Shared fixtures: a tiny CIFAR-10 in the official format, written by the tests themselves."""

import pickle

import numpy as np
import pytest

from cifargen.data import CIFAR10_CLASSES


def write_batch(path, images, labels, label="test batch"):
    """Write one batch with the official keys and types (bytes keys and strings, a uint8 array).

    Protocol 3 stores bytes natively; the official Python 2 files (protocol 2, read by
    ``test_reads_local_copy_in_official_format`` when the local copy exists) need no other globals.
    """
    batch = {b"batch_label": label.encode(), b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    path.write_bytes(pickle.dumps(batch, protocol=3))


def make_images(n, seed):
    """Smooth-ish random images so the models have something learnable."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)
    return np.kron(base, np.ones((1, 1, 4, 4), dtype=np.uint8))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test sees an empty cifargen cache, so a reference classifier trained on this machine
    never changes what a test measures (tests that need one train their own)."""
    monkeypatch.setenv("CIFARGEN_CACHE", str(tmp_path_factory.mktemp("cache")))


def local_cifar_root():
    """The official-layout build of the local CIFAR-10 copy, if .ci/run (or you) made one."""
    import os
    from pathlib import Path

    root = os.environ.get("CIFARGEN_TEST_DATA")
    return Path(root) if root and (Path(root) / "cifar-10-batches-py").is_dir() else None


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """A CIFAR-10 root with 5 train batches of 64 images and a test batch of 120."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", make_images(64, i), np.arange(64) % 10, f"training batch {i} of 5")
    write_batch(folder / "test_batch", make_images(120, 99), (np.arange(120) * 7) % 10, "testing batch 1 of 1")
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 64, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=3))
    return root


@pytest.fixture(scope="session")
def tiny_runs(cifar_root, tmp_path_factory):
    """Run folders of a 1-epoch VAE (no fitted prior), CVAE (with one) and AC-GAN with tiny widths."""
    from cifargen import default_config, train
    from cifargen.registry import model_kind

    root = tmp_path_factory.mktemp("tiny-runs")
    runs = {}
    for name, arch, extra in (("vae", dict(width=8, latent_dim=8), dict(fit_prior=False)),
                              ("cvae", dict(width=8, latent_dim=8), {}),
                              ("acgan", dict(width=8, d_width=8, latent_dim=8), {})):
        runs[name] = root / name
        train(default_config(name, data_dir=str(cifar_root), out=str(runs[name]), epochs=1, limit_train=64,
                             limit_test=20, progress=False, threads=2, quality=False,
                             arch=model_kind(name).arch_class(**arch), **extra), log=lambda line: None)
    return runs


@pytest.fixture(scope="session")
def live_server(tiny_runs):
    """The tiny runs served by uvicorn in a thread on a free loopback port; yields the base URL."""
    import threading
    import time

    pytest.importorskip("starlette", reason="the serve extra is not installed")
    import uvicorn

    from cifargen.serve import bind, create_app

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(list(tiny_runs.values()), "cpu"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
