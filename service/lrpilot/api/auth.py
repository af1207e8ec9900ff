"""Who is asking, and may they: the one check every route and the observation fast path run.

A request carries ``Authorization: Bearer TOKEN``, or the dashboard's cookie ``lrpilot_token``
(set by ``POST /ui/login``, api/session.py; the header wins when both are there). The token
is looked up by its SHA-256 in the tokens table (``store.tokens``); its role must include the
route's (reader < writer < admin). A run is named by the caller's project and the run_id of
the path (``Caller.run``): another project's run of that id is another run, and not one the
caller can see; a token learns nothing of other projects.

Open mode: while the database holds no token at all (a revoked one counts), every request from
this machine is served as project "default" with every role: the local quick start. A request
from another address is refused (401) whatever bound the server (``lrpilot serve`` also refuses
a non-loopback bind in that state, cli/serve.py), unless ``Settings.insecure_no_auth``.

Lookups are cached for ``CACHE_S`` at most, so that a revocation, an expiry or the first token
holds on every replica within that time, while a busy token costs the database one lookup a
second, not one a request.

Cross-site requests: a browser sends the cookie with any request to this host, a forged one
too, so a request the cookie authenticates that may change something (an unsafe method) must
carry ``X-LRPilot-CSRF: 1`` (a header no cross-site form can send, and no other origin may add
one: CORS is not enabled) and, if it says its ``Origin``, come from this very host; else 403
"cross-site request refused". A bearer token cannot be sent by another site's page, so
requests with the header are not asked for either. Open mode has no credential at all: an
unsafe request from a page of another origin is refused (403) there too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.responses import Response

from lrpilot.api.models import ClientIn, Message
from lrpilot.api.observe import noted
from lrpilot.api.responses import StrictJSONResponse
from lrpilot.entries import Asker
from lrpilot.store.records import ROLES, RunKey, Token, secret_hash
from lrpilot.store.runs import Store
from lrpilot.store.tokens import Tokens

DEFAULT_PROJECT = "default"  # open mode's project, and that of runs made before projects
CACHE_S = 1.0
MAX_CACHED = 10_000  # tokens remembered at once; beyond, the cache starts again
MAX_TOKEN_CHARS = 512  # longer is no token of ours: refused without a lookup
COOKIE = "lrpilot_token"  # the dashboard's login cookie (api/session.py): the token itself
CSRF_HEADER = "x-lrpilot-csrf"  # what a cookie request that changes something must carry
UNSAFE = frozenset(("POST", "PUT", "PATCH", "DELETE"))
CROSS_SITE = "cross-site request refused"


class Peer(NamedTuple):
    """Where a request comes from (its address; None: no network, an in-process client) and
    the name it was addressed to (its Host header)."""

    address: str | None = None
    host: str | None = None

    @classmethod
    def of(cls, request: Request) -> Peer:
        return cls(
            None if request.client is None else request.client.host, request.headers.get("host")
        )

    def addressed_here(self) -> bool:
        """Whether a request from this machine names this machine: one over the network (from
        a loopback address) must say localhost or an address in its Host header (not a name
        another site could point at 127.0.0.1); one from no network address (in-process) is."""
        return not _is_address(self.address) or names_this_machine(self.host)


IN_PROCESS = Peer()


class Caller(NamedTuple):
    """Who a request comes from: a token's name, project and role (name None in open mode)."""

    name: str | None
    project: str
    role: str

    def asker(self, client: ClientIn | None) -> Asker:
        """Who asks for the entries this request causes: the process as it declared itself
        (``client``), and this caller's token (none in open mode: such entries keep the bytes
        they always had)."""
        by = None if self.name is None else {"token": self.name, "project": self.project}
        return Asker(None if client is None else client.declared(), by)

    def run(self, run_id: str) -> RunKey:
        """The run ``run_id`` names for this caller: its project's (the only one it sees)."""
        return RunKey(self.project, run_id)


OPEN = Caller(None, DEFAULT_PROJECT, ROLES[-1])


# Why a request was refused, as the metrics count it (lrpilot_auth_failures_total's reason).
REASONS = (
    "missing", "malformed", "unknown", "revoked", "expired", "role", "remote", "cross-site",
    "host",
)  # fmt: skip


class Refused(Exception):
    """401 (no valid token) or 403 (a valid token without the role the route needs)."""

    def __init__(self, status: int, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason  # one of REASONS: a bounded label for the metrics

    def response(self) -> Response:
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="lrpilot"'
        return StrictJSONResponse({"detail": self.detail}, self.status, headers=headers)


class Authenticator:
    """The tokens a replica has looked up lately (see ``CACHE_S``)."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        open_to_all: bool = False,
    ) -> None:
        self._tokens = Tokens(store)
        self._open_to_all = open_to_all  # open mode serves other machines too (insecure)
        self._clock = clock
        self._exist: tuple[float, bool] | None = None
        self._found: dict[str, tuple[float, Token | None]] = {}
        self.refusals: dict[tuple[int, str], int] = {}  # (status, reason): count (the metrics)

    def _refuse(self, status: int, detail: str, reason: str) -> Refused:
        key = (status, reason)
        self.refusals[key] = self.refusals.get(key, 0) + 1
        return Refused(status, detail, reason)

    def presented(self, headers: Headers, method: str) -> tuple[str | None, bool]:
        """The Authorization a request authenticates with (its header, else its cookie as a
        bearer token) and whether it came from the cookie; ``Refused`` (403) when the cookie
        would authenticate a cross-site request (see the module's docstring)."""
        authorization = headers.get("authorization")
        if authorization is not None:
            return authorization, False
        secret = cookie_of(headers.get("cookie"))
        if secret is None:
            return None, False
        if method in UNSAFE and (headers.get(CSRF_HEADER) != "1" or not same_origin(headers)):
            raise self._refuse(403, CROSS_SITE, "cross-site")
        return f"Bearer {secret}", True

    def refuse_cross_site(self, caller: Caller, headers: Headers, method: str) -> None:
        """Open mode: an unsafe request from another origin's page is refused (403)."""
        if caller.name is None and method in UNSAFE and not same_origin(headers):
            raise self._refuse(403, CROSS_SITE, "cross-site")

    def tokens_exist(self) -> bool:
        """Whether any token exists (a blocking read, cached ``CACHE_S``)."""
        at = self._clock()
        if self._exist is None or at - self._exist[0] > CACHE_S:
            self._exist = (at, self._tokens.exist())
        return self._exist[1]

    def _token(self, hashed: str) -> Token | None:
        at = self._clock()
        known = self._found.get(hashed)
        if known is None or at - known[0] > CACHE_S:
            if len(self._found) >= MAX_CACHED:
                self._found.clear()
            known = self._found[hashed] = (at, self._tokens.find(hashed))
        return known[1]

    def check(self, authorization: str | None, role: str, peer: Peer = IN_PROCESS) -> Caller:
        """The caller, or ``Refused`` (401, 403), of a request from ``peer``. Blocking: it may
        read the database (``authorize`` is the async form)."""
        if not self.tokens_exist():
            return self._open(peer)
        scheme, _, secret = (authorization or "").strip().partition(" ")
        secret = secret.strip()
        if not authorization:
            raise self._refuse(
                401, "authentication required: send 'Authorization: Bearer TOKEN'", "missing"
            )
        if scheme.lower() != "bearer" or not secret:
            raise self._refuse(401, "the Authorization header must be 'Bearer TOKEN'", "malformed")
        token = None if len(secret) > MAX_TOKEN_CHARS else self._token(secret_hash(secret))
        if token is None:
            raise self._refuse(401, "unknown token", "unknown")
        refused = token.refused(datetime.now(UTC))
        if refused is not None:
            raise self._refuse(401, refused, "revoked" if token.revoked_at else "expired")
        if not token.may(role):
            raise self._refuse(
                403,
                f"this needs the role {role} (or above); token {token.name!r} has the role "
                f"{token.role}",
                "role",
            )
        return Caller(token.name, token.project, token.role)

    async def authorize(
        self, authorization: str | None, role: str, peer: Peer = IN_PROCESS
    ) -> Caller:
        """``check``, off the event loop when it must read the database."""
        if self._exist is not None and self._clock() - self._exist[0] <= CACHE_S:
            if not self._exist[1]:
                return self._open(peer)
            try:  # the common case, every lookup cached: no thread hop
                return self._check_cached(authorization, role)
            except _NotCached:
                pass
        return await asyncio.to_thread(self.check, authorization, role, peer)

    def _open(self, peer: Peer) -> Caller:
        """Open mode's caller, for a request from this machine addressed to it (or for any
        request, insecure). A browser on this machine may be sent to a page of another site
        whose name was then made to resolve to 127.0.0.1 (DNS rebinding): its requests come
        from this machine, addressed to that name, and would read and change runs. So a
        request over the network must name this machine: localhost, or an IP address."""
        if self._open_to_all:
            return OPEN
        if is_local(peer.address):
            if peer.addressed_here():
                return OPEN
            raise self._refuse(
                403,
                f"this service holds no API token, so it answers requests addressed to this "
                f"machine only (localhost, 127.0.0.1, [::1]), not to {peer.host!r}: create a token "
                "(`lrpilot token create --project default --role admin`) to serve other names",
                "host",
            )
        raise self._refuse(
            401,
            "this service holds no API token, so it serves requests from its own machine only: "
            "create a token (`lrpilot token create --project default --role admin`) and send "
            "'Authorization: Bearer TOKEN'",
            "remote",
        )

    def _check_cached(self, authorization: str | None, role: str) -> Caller:
        secret = (authorization or "").strip().partition(" ")[2].strip()
        if secret and len(secret) <= MAX_TOKEN_CHARS:
            known = self._found.get(secret_hash(secret))
            if known is None or self._clock() - known[0] > CACHE_S:
                raise _NotCached
        return self.check(authorization, role)


class _NotCached(Exception):
    pass


def _is_address(peer: str | None) -> bool:
    try:
        ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    return True


def names_this_machine(host: str | None) -> bool:
    """Whether a Host header names this machine by a name no other site can take: localhost
    (or a name under it) or an IP address. None: a client that says no host (HTTP/1.0; every
    browser says one)."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 address, with or without a port
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.rstrip(".") == "localhost" or name.rstrip(".").endswith(".localhost"):
        return True
    return _is_address(name)


def is_local(peer: str | None) -> bool:
    """Whether a request's peer address is this machine's: a loopback address, or no network
    address at all (a Unix socket, an in-process client); a network peer always has one."""
    if peer is None:
        return True
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return True


def cookie_of(header: str | None) -> str | None:
    """The login cookie's value in a ``Cookie`` header, if any (an empty one is none)."""
    if not header or COOKIE not in header:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip().strip('"') or None
    return None


def same_origin(headers: Headers) -> bool:
    """Whether the request's ``Origin``, if it says one, is its own host (a browser says it on
    every cross-origin request that may change something; other clients say none)."""
    origin = headers.get("origin")
    if origin is None:
        return True
    host = headers.get("host")
    return host is not None and origin != "null" and urlsplit(origin).netloc == host


# Declares the scheme in the OpenAPI document (so /docs offers "Authorize" and sends the token);
# the header is read and checked by ``Authenticator``, not by it (auto_error off).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="an API token: `lrpilot token create --project P --role reader|writer|admin`",
)


def require(role: str) -> Any:
    """The dependency of a route that needs ``role``: the caller, checked."""

    async def caller(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Caller:
        auth: Authenticator = request.app.state.auth
        authorization = auth.presented(request.headers, request.method)[0]
        who = await auth.authorize(authorization, role, Peer.of(request))
        auth.refuse_cross_site(who, request.headers, request.method)
        noted(request.scope, who.name, who.project)
        return who

    caller.__name__ = f"require_{role}"
    return Depends(caller)


Reader = Annotated[Caller, require("reader")]
Writer = Annotated[Caller, require("writer")]
Admin = Annotated[Caller, require("admin")]


REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Message,
        "description": "no token, or an unknown, expired or revoked one",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    },
    403: {"model": Message, "description": "the token's role is below the one this needs"},
}


def install(app: FastAPI) -> None:
    """The refusals' answer (their documentation: ``REFUSALS``, given to the routers that
    check their caller, app.py)."""

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> Response:
        return exc.response()
