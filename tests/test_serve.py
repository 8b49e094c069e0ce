"""``cifargen serve``: the HTTP API through Starlette's test client (PNG answers of the right size
and content, 4xx JSON for bad input), concurrent requests to a real server, and the command."""

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the test client needs httpx")

with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its test client; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from cifargen import load  # noqa: E402
from cifargen.cli import main  # noqa: E402
from cifargen.data import load_dataset  # noqa: E402
from cifargen.errors import ConfigError  # noqa: E402
from cifargen.images import denormalize  # noqa: E402
from cifargen.serve import bind, create_app  # noqa: E402
from cifargen.serve.service import MAX_UPLOAD_BYTES  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_runs):
    with TestClient(create_app(list(tiny_runs.values()), "cpu"), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def models(tiny_runs):
    """The same models, loaded independently of the server, as references."""
    return {name: load(path) for name, path in tiny_runs.items()}


def png_array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def tile(grid, row, col, size=32, padding=2):
    """The image at (row, col) of a grid with ``padding`` pixels around every image."""
    top, left = padding + row * (size + padding), padding + col * (size + padding)
    return grid[top:top + size, left:left + size]


def encode(array, fmt="PNG", mode=None):
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_the_page_and_its_script_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cifargen explorer" in page.text and '<script src="/static/app.js">' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"] and "/samples" in script.text


def test_summaries_hold_the_runs_figures_and_curves(client, tiny_runs):
    listed = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert set(listed) == {"vae", "cvae", "acgan"}
    assert listed["vae"]["priors"] == ["standard"] and not listed["vae"]["conditional"]
    assert listed["cvae"]["priors"] == ["standard", "fitted"] and listed["cvae"]["default_prior"] == "fitted"
    assert listed["acgan"]["priors"] == ["standard"] and listed["acgan"]["conditional"]
    assert [listed[n]["can_reconstruct"] for n in ("vae", "cvae", "acgan")] == [True, True, False]
    assert [listed[n]["can_discriminate"] for n in ("vae", "cvae", "acgan")] == [False, False, True]
    for name, folder in tiny_runs.items():
        metrics = json.loads((folder / "metrics.json").read_text())
        detail = client.get(f"/api/models/{name}").json()
        assert detail["best"] == metrics["best"] and detail["best_epoch"] == 1
        assert detail["class_names"] == list(load_dataset(metrics["config"]["data_dir"], train=False).class_names)
        assert detail["curves"]["epochs"] == [1]
        key = metrics["best_metric"]
        assert detail["curves"]["series"][key]["test"] == [metrics["history"][0]["test"][key]]
        for train_key, value in metrics["history"][0]["train"].items():
            assert detail["curves"]["series"][train_key]["train"] == [value]


@pytest.mark.parametrize("name, query, label", [("cvae", "class=3&prior=fitted", 3), ("cvae", "class=7&prior=standard", 7),
                                                ("acgan", "class=2", 2), ("vae", "", None)])
def test_samples_come_back_as_a_png_grid_of_the_models_own_samples(client, models, name, query, label):
    grid = png_array(client.get(f"/api/models/{name}/samples?n=16&seed=5&{query}"))
    assert grid.shape == (2 * 34 + 2, 8 * 34 + 2, 3)  # 16 samples, 8 to a row, 2 pixels around each
    model = models[name]
    prior = "fitted" if "fitted" in query else "standard"
    y = torch.full((16,), label) if label is not None else None
    expected = denormalize(model.generate(16, y, generator=torch.Generator().manual_seed(5), prior=prior).images)
    for i in (0, 9, 15):
        assert np.abs(tile(grid, i // 8, i % 8).astype(int) - expected[i].astype(int)).max() <= 1, i
    assert not np.array_equal(tile(grid, 0, 0), tile(grid, 0, 1))  # different draws


def test_sample_grid_sizes_follow_n_and_every_class_cycles(client):
    assert png_array(client.get("/api/models/vae/samples?n=5&seed=1")).shape == (36, 5 * 34 + 2, 3)
    assert png_array(client.get("/api/models/cvae/samples?n=64")).shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    a = png_array(client.get("/api/models/acgan/samples?n=10&seed=3"))
    b = png_array(client.get("/api/models/acgan/samples?n=10&seed=3"))
    assert np.array_equal(a, b)  # the same seed draws the same grid


def test_interpolation_decodes_the_line_between_two_seeds(client, models):
    model = models["cvae"]
    y = torch.tensor([4])
    ends = [model.latents(1, y, torch.Generator().manual_seed(s), "fitted") for s in (11, 12)]
    for t in (0.0, 0.25, 1.0):
        image = png_array(client.get(f"/api/models/cvae/interpolation?seed_a=11&seed_b=12&t={t}&class=4&prior=fitted"))
        assert image.shape == (32, 32, 3)
        expected = denormalize(model.decode((1 - t) * ends[0] + t * ends[1], y))[0]
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1, t
    start = png_array(client.get("/api/models/vae/interpolation?seed_a=11&seed_b=12&t=0"))
    end = png_array(client.get("/api/models/vae/interpolation?seed_a=11&seed_b=12&t=1"))
    assert not np.array_equal(start, end)


def test_an_upload_is_reconstructed_beside_itself(client, models, tiny_runs):
    data_dir = json.loads((tiny_runs["cvae"] / "metrics.json").read_text())["config"]["data_dir"]
    original = load_dataset(data_dir, train=False).images[0].permute(1, 2, 0).numpy()
    pair = png_array(client.post("/api/models/cvae/reconstruction?class=2", content=encode(original)))
    assert pair.shape == (36, 2 * 34 + 2, 3)
    assert np.array_equal(tile(pair, 0, 0), original)  # a 32x32 RGB upload is taken as it is
    model = models["cvae"]
    x = torch.from_numpy(original).permute(2, 0, 1).unsqueeze(0).float() / 255
    y = torch.tensor([2])
    with torch.no_grad():
        mu, _ = model.encoder(x, y)
        expected = denormalize(model.decoder(mu, y))[0]
    assert np.abs(tile(pair, 0, 1).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("fmt, mode, size", [("PNG", "RGBA", (90, 50)), ("JPEG", "L", (300, 200)), ("GIF", "P", (17, 40)),
                                             ("BMP", "RGB", (64, 64)), ("PNG", "I;16", (40, 40))])
def test_uploads_of_any_size_and_mode_are_converted(client, fmt, mode, size):
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), fmt, mode)
    pair = png_array(client.post("/api/models/vae/reconstruction", content=data))
    assert pair.shape == (36, 70, 3)


def test_the_discriminator_judges_an_upload(client, models):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    verdict = client.post("/api/models/acgan/discrimination", content=encode(image)).json()
    model = models["acgan"]
    with torch.no_grad():
        adv, logits = model.discriminator(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255)
    assert verdict["real"] == pytest.approx(torch.sigmoid(adv).item(), abs=1e-5)
    probabilities = [c["probability"] for c in verdict["classes"]]
    assert probabilities == pytest.approx(torch.softmax(logits, 1)[0].tolist(), abs=1e-5)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert [c["name"] for c in verdict["classes"]] == list(model.class_names)
    assert verdict["predicted"] == model.class_names[int(logits.argmax())]


def _huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (6000, 5000)).save(buffer, format="PNG")  # 30 million pixels in a few kilobytes
    return buffer.getvalue()


@pytest.mark.parametrize("method, url, body, status, words", [
    ("get", "/api/models/gan9000", None, 404, "unknown model 'gan9000'"),
    ("get", "/api/models/gan9000/samples", None, 404, "unknown model"),
    ("get", "/api/models/cvae/samples?class=10", None, 400, "class must be between 0 and 9"),
    ("get", "/api/models/cvae/samples?class=-1", None, 400, "class must be between 0"),
    ("get", "/api/models/cvae/samples?class=cat", None, 400, "class must be a whole number"),
    ("get", "/api/models/vae/samples?class=1", None, 400, "not conditional"),
    ("get", "/api/models/vae/samples?seed=-1", None, 400, "seed must be between 0 and"),
    ("get", f"/api/models/vae/samples?seed={2 ** 63}", None, 400, "seed must be between 0 and"),
    ("get", "/api/models/vae/samples?seed=1e3", None, 400, "seed must be a whole number"),
    ("get", "/api/models/vae/samples?n=0", None, 400, "n must be between 1 and 64"),
    ("get", "/api/models/vae/samples?n=65", None, 400, "n must be between 1 and 64"),
    ("get", "/api/models/vae/samples?prior=fitted", None, 400, "prior 'fitted' is not available"),
    ("get", "/api/models/cvae/samples?prior=uniform", None, 400, "choose standard or fitted"),
    ("get", "/api/models/acgan/interpolation?t=1.5", None, 400, "t must be between 0.0 and 1.0"),
    ("get", "/api/models/acgan/interpolation?t=nan", None, 400, "t must be between"),
    ("get", "/api/models/acgan/interpolation?seed_b=x", None, 400, "seed_b must be a whole number"),
    ("post", "/api/models/vae/reconstruction", b"", 400, "the upload is empty"),
    ("post", "/api/models/vae/reconstruction", b"hello, not an image", 400, "not an image"),
    ("post", "/api/models/vae/reconstruction", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 400, "not an image"),
    ("post", "/api/models/vae/reconstruction", b"x" * (MAX_UPLOAD_BYTES + 1), 413, "larger than 8 MiB"),
    ("post", "/api/models/vae/reconstruction", "huge", 413, "more than 25,000,000"),
    ("post", "/api/models/cvae/reconstruction", "image", 400, "give the uploaded image's class"),
    ("post", "/api/models/cvae/reconstruction?class=12", "image", 400, "class must be between 0 and 9"),
    ("post", "/api/models/acgan/reconstruction", "image", 400, "cannot reconstruct"),
    ("post", "/api/models/vae/discrimination", "image", 400, "has no discriminator"),
    ("post", "/api/models/nope/discrimination", "image", 404, "unknown model"),
    ("get", "/api/models/vae/reconstruction", None, 405, ""),
    ("get", "/no/such/page", None, 404, ""),
    ("get", "/static/secret.txt", None, 404, "no such file"),
])
def test_bad_input_gets_a_4xx_json_message(client, method, url, body, status, words):
    if body == "huge":
        body = _huge_png()
    elif body == "image":
        body = encode(np.zeros((32, 32, 3), dtype=np.uint8))
    response = client.get(url) if method == "get" else client.post(url, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert words in message and "Traceback" not in message and "\n" not in message


def test_concurrent_requests_to_a_real_server_all_succeed(live_server):
    urls = [f"{live_server}/api/models/{name}/samples?n=16&seed={seed}"
            for name in ("vae", "cvae", "acgan") for seed in (0, 1, 2)]
    fetch = lambda url: urllib.request.urlopen(url, timeout=60).read()  # noqa: E731
    serial = [fetch(url) for url in urls]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(fetch, urls * 2))
    assert parallel == serial * 2  # every answer complete and the same as when asked alone


def test_serve_command_starts_a_server_and_stops_on_ctrl_c(tiny_runs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "cifargen", "serve", str(tiny_runs["vae"]), str(tiny_runs["acgan"]),
                                "--port", "0", "--device", "cpu"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stderr.readline()
        assert "serving vae, acgan at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        listed = json.loads(urllib.request.urlopen(f"{url}api/models", timeout=30).read())
        assert [m["name"] for m in listed["models"]] == ["vae", "acgan"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_serve_refuses_missing_runs_and_busy_ports_in_one_line(tiny_runs, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model file" in err
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tiny_runs["vae"]), "--port", "70000"])
    assert exc.value.code == 2 and "must be a port number" in capsys.readouterr().err
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_a_run_stopped_before_its_end_is_served_from_its_best_checkpoint(tiny_runs, tmp_path):
    import shutil

    from cifargen.serve.service import Explorer

    stopped = tmp_path / "stopped"
    shutil.copytree(tiny_runs["acgan"], stopped)
    (stopped / "model.safetensors").unlink()  # what a run stopped by Ctrl-C or a crash lacks
    (stopped / "config.json").unlink()
    served = Explorer.load([stopped], torch.device("cpu")).get("stopped").model
    finished = load(tiny_runs["acgan"])
    for name, tensor in finished.state_dict().items():
        assert torch.equal(served.state_dict()[name], tensor), name


def test_serve_without_the_extra_fails_at_once_naming_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "starlette", None)
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", str(tmp_path / "not-even-a-run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "cifargen[serve]"' in err
