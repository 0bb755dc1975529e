"""The review page's HTTP side: a FastAPI app over one ``ReviewSession``.

Routes: ``/`` (the page), ``/static/*`` (its script and style), and a small JSON API the
page calls: ``GET /api/state`` (defaults, the stored preview, the current job), ``POST
/api/preview`` (generate test results), ``GET /api/preview/images/{index}`` (a sample
image, by position only), ``POST /api/label`` (approve and label), ``GET /api/job``
(progress and the final report), ``GET /api/review/queue`` and
``/api/review/thumbnails/{rank}`` (the batch's review queue, by rank only), ``POST
/api/train`` (train a model on the labeled batch) and ``GET /api/models`` (the trained
models under ``OUT/models``, offered as labelers).

Access: on a loopback address the page is open to this machine only (Host header
checked, so another site cannot reach it through DNS rebinding). On any other address a
token is required: sent once as ``?token=`` (the page then keeps it in an HttpOnly
cookie and drops it from the address bar), or as ``Authorization: Bearer``. POSTs must
be JSON, which a form on another site cannot send without the browser asking first.

Other sites: a request that changes something (any method but GET, HEAD and OPTIONS)
whose ``Origin`` (or, without one, ``Referer``) is not the page's own origin is refused
(403), so another page open in the same browser cannot generate test results or approve
a batch (which charges credits); a request with neither header (curl, a script with the
token) is served as before. Every response forbids framing (``frame-ancestors 'none'``,
``X-Frame-Options: DENY``), so no other site can show the page under a decoy and steer
its clicks, and carries ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from review_ui.jobs import (
    LabelRequest,
    PreviewRequest,
    RequestError,
    ReviewSession,
)
from review_ui.training import TrainRequest, training_form_defaults
from tasks.review import sample_image_jpeg

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "autolabel_token"
_OPEN_PATHS = {"/favicon.ico"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Only framing is restricted: the page's own scripts, styles and images are same-origin
# and any fuller policy would have to list them.
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or 'localhost') is reachable from this machine
    only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(
    session: ReviewSession,
    *,
    token: str | None = None,
    page_defaults: dict[str, Any] | None = None,
    loopback_only: bool = True,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The page's app.

    Args:
        session: The output folder's state and jobs.
        token: Required on every request when set (the server is reachable from other
            machines); None on a loopback address.
        page_defaults: Values the form starts with (source, classes, task, model).
        loopback_only: Accept only Host headers naming this machine.
        allowed_hosts: More host names to accept then (the address served on).
    """
    app = _ReviewApp(title="autolabel review", docs_url=None, redoc_url=None)
    if loopback_only:
        app.add_middleware(
            TrustedHostMiddleware,
            allowed_hosts=["127.0.0.1", "localhost", "[::1]", *(allowed_hosts or [])],
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method not in _SAFE_METHODS and not _same_origin(request):
            return JSONResponse(
                {"error": "refused: this request comes from another site's page"},
                status_code=403,
            )
        if token is not None and request.url.path not in _OPEN_PATHS:
            given = _token_of(request)
            if given is None or not secrets.compare_digest(
                given.encode(), token.encode()
            ):
                return JSONResponse(
                    {
                        "error": "a valid token is required (open the URL printed by "
                        "`autolabel ui`)"
                    },
                    status_code=401,
                )
            if request.query_params.get("token") and request.url.path == "/":
                redirect = RedirectResponse("/", status_code=303)
                redirect.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="lax")
                return redirect
        if request.method == "POST" and not request.headers.get(
            "content-type", ""
        ).startswith("application/json"):
            return JSONResponse({"error": "send JSON"}, status_code=415)
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_STORE)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        job = session.job()
        return {
            "defaults": page_defaults or {},
            "preview": session.preview(),
            "job": job.as_dict() if job else None,
            "queue": session.queue(),
            "models": session.models(),
            "training": {
                "ready": session.can_train(),
                "defaults": training_form_defaults(),
            },
        }

    @app.get("/api/review/queue")
    def review_queue() -> JSONResponse:
        return JSONResponse(session.queue(), headers=_NO_STORE)

    @app.get("/api/review/thumbnails/{rank}")
    def review_thumbnail(rank: int) -> Response:
        path = session.queue_thumbnail(rank)
        if path is None:
            return JSONResponse({"error": "no such thumbnail"}, status_code=404)
        return FileResponse(path, media_type="image/jpeg", headers=_NO_STORE)

    @app.post("/api/preview")
    def generate(request: PreviewRequest) -> dict[str, Any]:
        return session.start_preview(request).as_dict()

    @app.get("/api/preview")
    def stored_preview() -> JSONResponse:
        payload = session.preview()
        if payload is None:
            return JSONResponse({"error": "no test results yet"}, status_code=404)
        return JSONResponse(payload, headers=_NO_STORE)

    @app.get("/api/preview/images/{index}")
    def sample_image(index: int, key: str | None = None) -> Response:
        # The page's URLs carry the preview's key, so a new preview gets new URLs and a
        # page showing an older one gets no mismatched image.
        current = session.preview()
        if current is None or (key is not None and key != current["key"]):
            return JSONResponse({"error": "no such image"}, status_code=404)
        jpeg = sample_image_jpeg(
            str(session.out), index, options=session.defaults.sources
        )
        if jpeg is None:
            return JSONResponse({"error": "no such image"}, status_code=404)
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    @app.post("/api/label")
    def label(request: LabelRequest) -> dict[str, Any]:
        return session.start_labeling(request).as_dict()

    @app.post("/api/train")
    def train(request: TrainRequest) -> dict[str, Any]:
        return session.start_training(request).as_dict()

    @app.get("/api/models")
    def models() -> JSONResponse:
        return JSONResponse(session.models(), headers=_NO_STORE)

    @app.get("/api/job")
    def job() -> JSONResponse:
        current = session.job()
        return JSONResponse(current.as_dict() if current else None, headers=_NO_STORE)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


_NO_STORE = {"Cache-Control": "no-store"}


class _ReviewApp(FastAPI):
    """FastAPI with the security headers added outside every other layer, so the
    host check's, the token check's and even a crash's responses carry them too."""

    def build_middleware_stack(self) -> ASGIApp:
        return _SecurityHeaders(super().build_middleware_stack())


class _SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _same_origin(request: Request) -> bool:
    """Whether a state-changing request may proceed: its ``Origin`` (else its
    ``Referer``'s origin) is the one the page is served on, or it sends neither (not a
    browser page's request: curl, a script)."""
    claimed = request.headers.get("origin")
    if claimed is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True
        claimed = referer
    own = _origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}")
    return own is not None and _origin_of(claimed) == own


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, default port filled in; None when it has none
    ("null", an opaque origin, or garbage)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _token_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
