"""The interactive API documentation, ``/docs`` (Swagger UI) and ``/redoc``, served offline.

FastAPI's own pages load their scripts, styles, favicon and fonts from CDNs: without internet
(an air-gapped cluster, a laptop on a train) they are blank. Here every asset comes from this
server, out of the ``fastapi-offline`` package, which vendors Swagger UI and ReDoc and follows
their releases (a dependency of the ``lrpilot`` wheel: upgrading it upgrades the pages).

The pages are plain routes, as FastAPI's are, not API operations: they are in no OpenAPI
document and need no token (the document itself, ``/openapi.json``, is open too).
"""

from __future__ import annotations

from typing import TypedDict

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import Response

# Everything the pages load comes from this server, said to the browser too: ReDoc's sidebar
# shows Redocly's logo from their CDN (an image that hides itself when it fails); the policy
# stops even the attempt. The pages' own bootstrap scripts and their components' styles are
# inline; ReDoc's search runs in a worker made from a blob.
POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "worker-src 'self' blob:",
    )
)
SWAGGER_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
# fastapi-offline's vendored files (swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js,
# favicon.png): its package and folder
ASSETS = ("fastapi_offline", "static")


class Document(TypedDict):
    """What both pages are given: the document they show, and their title."""

    openapi_url: str
    title: str


def install(app: FastAPI) -> None:
    """``/docs``, ``/redoc`` and their assets under ``/docs/assets`` (``/`` is the dashboard's:
    api/ui.py). ``app`` must be made with ``docs_url=None, redoc_url=None`` (no CDN pages)."""
    assert app.openapi_url is not None, "the docs pages show the OpenAPI document"
    openapi_url = app.openapi_url
    title = app.title

    def prefixed(request: Request, path: str) -> str:
        # behind a proxy that mounts the service under a prefix, links must carry it
        return f"{request.scope.get('root_path', '')}{path}"

    def asset(request: Request, name: str) -> str:
        return prefixed(request, f"{ASSETS_PATH}/{name}")

    def document(request: Request, viewer: str) -> Document:
        return {"openapi_url": prefixed(request, openapi_url), "title": f"{title} - {viewer}"}

    async def swagger_ui(request: Request) -> Response:
        page = get_swagger_ui_html(
            **document(request, "Swagger UI"),
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            # lrpilot's tokens are bearer tokens, not an OAuth2 flow: no redirect page
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        return _offline(page)

    async def redoc(request: Request) -> Response:
        page = get_redoc_html(
            **document(request, "ReDoc"),
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,  # fonts from Google are a CDN too: the system's serve
        )
        return _offline(page)

    app.add_route(SWAGGER_PATH, swagger_ui, include_in_schema=False)
    app.add_route(REDOC_PATH, redoc, include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(packages=[ASSETS]), name="docs-assets")


def _offline(page: Response) -> Response:
    page.headers["Content-Security-Policy"] = POLICY
    return page
