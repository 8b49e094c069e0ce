"""``cifargen serve``: a local web page to explore trained models.

    cifargen serve runs/cvae runs/acgan            # then open http://127.0.0.1:8000/

For each model named on the command line the page shows its headline figures and training
curves and lets a person draw samples (by class, seed and prior), interpolate between two seeds,
and upload an image to see a VAE/CVAE reconstruct it or the AC-GAN's discriminator judge it.

The web framework (Starlette, served by uvicorn) is the optional ``serve`` extra; nothing here
imports it until a server is built.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import torch

from ..errors import ConfigError
from ..runtime import resolve_device

INSTALL_HINT = 'pip install "cifargen[serve]"'


def require_serve():
    """The uvicorn module, or a one-line ``ConfigError`` naming the install command when the serve extra is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConfigError(f"cifargen serve needs {exc.name or 'the web server'}: {INSTALL_HINT}") from None
    return uvicorn


def create_app(runs: list[str | os.PathLike], device: str | torch.device = "cpu"):
    """The web application (Starlette) serving the models in ``runs`` (run folders or model files) on ``device``."""
    require_serve()
    from .app import make_app
    from .service import Explorer

    device = resolve_device(device) if isinstance(device, str) else device
    return make_app(Explorer.load(list(runs), device))


def run_server(runs: list[str | os.PathLike], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
               log=None) -> None:
    """Load the models, listen on ``host``:``port`` (0: any free port) and serve until Ctrl-C."""
    uvicorn = require_serve()
    log = log or (lambda line: print(line, file=sys.stderr))
    app = create_app(runs, device)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    names = ", ".join(app.state.explorer.models)
    log(f"serving {names} at http://{url_host}:{bound}/ (Ctrl-C stops)")
    if not _is_loopback(host):
        log(f"note: --host {host} lets other machines reach this page; it has no login")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: stopping is the normal end
        pass
    finally:
        sock.close()
    log("stopped")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, or a ``ConfigError`` saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                          "(0 picks a free one)") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
