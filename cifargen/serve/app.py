"""The Starlette application behind ``cifargen serve``: the page, its script and a small JSON/PNG API.

    GET  /                                      the page
    GET  /api/models                            every model's summary
    GET  /api/models/{name}                     one summary with the run's per-epoch curves
    GET  /api/models/{name}/samples             PNG grid: n, seed, class, prior
    GET  /api/models/{name}/interpolation       PNG: seed_a, seed_b, t in [0, 1], class, prior
    POST /api/models/{name}/reconstruction      body: an image file; class for a CVAE -> PNG (input | reconstruction)
    POST /api/models/{name}/discrimination      body: an image file -> JSON P(real) and class probabilities

Bad input gets a 4xx JSON ``{"error": message}``. Model calls run in the thread pool, one at a time.
"""

from __future__ import annotations

from importlib import resources

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # the CLI checks first; this names the fix for API users
    raise ImportError(f'cifargen.serve needs the serve extra: pip install "cifargen[serve]" ({exc})') from None

from ..errors import CifargenError
from .service import MAX_SAMPLES, MAX_SEED, MAX_UPLOAD_BYTES, BadRequest, Explorer

STATIC = ("index.html", "app.js")
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def make_app(explorer: Explorer) -> Starlette:
    """The application serving ``explorer``'s models; all its state lives in ``app.state``."""

    async def page(request: Request) -> Response:
        return HTMLResponse(_static("index.html"))

    async def static(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in STATIC:
            raise BadRequest(404, f"no such file: {name}")
        return Response(_static(name), media_type=MEDIA_TYPES[name[name.rfind("."):]])

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [m.summary() for m in explorer.models.values()]})

    async def model(request: Request) -> Response:
        entry = explorer.get(request.path_params["name"])
        return JSONResponse({**entry.summary(), "curves": entry.curves()})

    async def samples(request: Request) -> Response:
        q = request.query_params
        args = (request.path_params["name"], _int(q, "n", 1, MAX_SAMPLES, default=32), _int(q, "seed", 0, MAX_SEED),
                _int(q, "class", 0, None, default=None), q.get("prior") or None)
        return _png(await run_in_threadpool(explorer.samples, *args))

    async def interpolation(request: Request) -> Response:
        q = request.query_params
        args = (request.path_params["name"], _int(q, "seed_a", 0, MAX_SEED), _int(q, "seed_b", 0, MAX_SEED, default=1),
                _float(q, "t", 0.0, 1.0), _int(q, "class", 0, None, default=None), q.get("prior") or None)
        return _png(await run_in_threadpool(explorer.interpolation, *args))

    async def reconstruction(request: Request) -> Response:
        name = request.path_params["name"]
        explorer.get(name)  # an unknown model is a 404 before the upload is read
        label = _int(request.query_params, "class", 0, None, default=None)
        upload = await _read_upload(request)
        return _png(await run_in_threadpool(explorer.reconstruction, name, upload, label))

    async def discrimination(request: Request) -> Response:
        name = request.path_params["name"]
        explorer.get(name)
        upload = await _read_upload(request)
        return JSONResponse(await run_in_threadpool(explorer.discrimination, name, upload))

    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def refused(request: Request, exc: CifargenError) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail or "request refused"}, status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"the server failed on this request ({type(exc).__name__})"}, status_code=500)

    routes = [
        Route("/", page),
        Route("/static/{file}", static),
        Route("/api/models", models),
        Route("/api/models/{name}", model),
        Route("/api/models/{name}/samples", samples),
        Route("/api/models/{name}/interpolation", interpolation),
        Route("/api/models/{name}/reconstruction", reconstruction, methods=["POST"]),
        Route("/api/models/{name}/discrimination", discrimination, methods=["POST"]),
    ]
    handlers = {BadRequest: bad_request, CifargenError: refused, HTTPException: http_error, Exception: server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.explorer = explorer
    return app


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


def _number(query, key: str, parse, what: str, low, high, default, shown):
    """The query's ``key`` parsed with ``parse`` and within [low, high] (``default`` when absent or empty);
    ``shown(value, text)`` is how a refused value is quoted."""
    text = query.get(key)
    if text is None or text == "":
        return default
    try:
        value = parse(text)
    except ValueError:
        raise BadRequest(400, f"{key} must be {what}, got {text[:40]!r}") from None
    if not (value >= low and (high is None or value <= high)):  # NaN fails too
        raise BadRequest(400, f"{key} must be between {low} and {high if high is not None else 'any'}, "
                              f"got {shown(value, text)}")
    return value


def _int(query, key: str, low: int, high: int | None, default: int | None = 0) -> int | None:
    """The whole number ``key`` of the query in [low, high] (``default`` when absent or empty)."""
    return _number(query, key, int, "a whole number", low, high, default, lambda value, text: value)


def _float(query, key: str, low: float, high: float) -> float:
    """The number ``key`` of the query in [low, high] (``low`` when absent or empty)."""
    return _number(query, key, float, "a number", low, high, low, lambda value, text: text[:40])


async def _read_upload(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it exceeds the size limit."""
    declared = request.headers.get("content-length")
    limit = f"the upload is larger than {MAX_UPLOAD_BYTES // 2 ** 20} MiB; send a smaller image"
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise BadRequest(413, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise BadRequest(413, limit)
        chunks.append(chunk)
    return b"".join(chunks)
