"""The dashboard, ``/ui/``: static pages (``lrpilot/ui``: HTML, plain ES modules, CSS and a
vendored uPlot, see its VENDOR.md) that read the same /v1 API as every client.

Nothing is built and nothing comes from elsewhere: the files ship in the wheel, the page's
Content-Security-Policy allows this server alone (no inline script or style, no other host),
so the dashboard works offline and a stray ``innerHTML`` of a run's label could not run code
even if one slipped in. The pages route by the URL's fragment (``/ui/#/runs/ID``): the server
serves one page, and the links carry no path a proxy would have to know.

The login, the logout and ``whoami`` (``/ui/login``...) are routes of ``api/session.py``: the
assets live under ``/ui/assets/`` so that no mount shadows them.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.types import Scope

HOME = "/ui/"
ASSETS_PATH = "/ui/assets"
FILES = ("lrpilot", "ui")  # the package folder the pages ship in
# This server only: scripts and styles from files (uPlot sets element styles from script,
# which a policy does not govern), images drawn into canvases, requests to the API
POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # a new lrpilot may change a page: the browser asks again (a 304 costs nothing)
    "Cache-Control": "no-cache",
}


class _Assets(StaticFiles):
    """The pages' files, each with the page's policy and headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    """``/ui/`` (the page), ``/ui/assets/...`` (its files), and ``/`` sending a person there."""
    assets = _Assets(packages=[FILES])
    index = assets.lookup_path("index.html")[0]
    assert index, "lrpilot/ui/index.html ships with the package"

    def prefixed(request: Request, path: str) -> str:
        # behind a proxy that mounts the service under a prefix, the redirect must carry it
        return f"{request.scope.get('root_path', '')}{path}"

    async def page(request: Request) -> Response:
        return FileResponse(index, headers=HEADERS, media_type="text/html")

    async def home(request: Request) -> Response:
        return RedirectResponse(prefixed(request, HOME))

    app.add_route(HOME, page, include_in_schema=False)
    app.add_route(HOME.rstrip("/"), home, include_in_schema=False)
    app.add_route("/", home, include_in_schema=False)
    app.mount(ASSETS_PATH, assets, name="ui-assets")
