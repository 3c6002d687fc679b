"""`GET /ui`: the dashboard, one page served by every node.

The page is three files shipped in this package (``dashboard.html``, ``dashboard.css``,
``dashboard.js``: package data, no build step, nothing fetched from outside) put together
into one HTML document when first asked for. In the browser it polls ``/v1/status`` of every
member and follows each member's ``/v1/events`` (`kvraft.event_stream`) straight from that
member, so it keeps working when the node that served it dies.

Those are cross-origin requests (each member is its own origin), so `with_member_cors` lets
a page served by a member of this cluster read a node's status and events: the
``Access-Control-Allow-Origin`` answer names the page's origin only when that origin is a
member's HTTP address, never ``*`` (any web site the user visits could read the cluster).

While auth is enabled the page follows events with ``fetch()`` and an ``Authorization:
Bearer`` header (an `EventSource` cannot send one), which makes the browser ask first with a
CORS preflight (``OPTIONS``): `preflight_headers` answers it, for a member's page only.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "UI_PATH",
    "cors_headers",
    "dashboard_html",
    "origin_allowed",
    "preflight_headers",
    "serve_ui",
    "with_member_cors",
]

UI_PATH = "/ui"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@functools.cache
def dashboard_html() -> bytes:
    """The page: the HTML with its stylesheet and script inlined."""
    package = resources.files(__package__)
    html = (package / "dashboard.html").read_text(encoding="utf-8")
    css = (package / "dashboard.css").read_text(encoding="utf-8")
    script = (package / "dashboard.js").read_text(encoding="utf-8")
    return html.replace("/*DASHBOARD_CSS*/", css).replace("//DASHBOARD_JS", script).encode()


async def serve_ui(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(
        body=dashboard_html(),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            # Nothing from outside: the page talks only to this cluster's nodes.
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                "connect-src http: https:; img-src data:"
            ),
        },
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, member_http_addresses: list[str]) -> bool:
    """Whether a page from `origin` (``http(s)://host:port``) was served by one of the members
    (`member_http_addresses`: ``host:port`` each). ``localhost`` and loopback addresses are
    one host: a page opened as ``http://localhost:8001`` is node 127.0.0.1:8001's."""
    parts = urlsplit(origin)
    # https: a cluster with [tls] serves its dashboard over HTTPS too.
    if parts.scheme not in ("http", "https") or parts.hostname is None or parts.port is None:
        return False
    for address in member_http_addresses:
        member = urlsplit("http://" + address)
        if member.port != parts.port or member.hostname is None:
            continue
        if member.hostname == parts.hostname or (
            _loopback(member.hostname) and _loopback(parts.hostname)
        ):
            return True
    return False


def cors_headers(request: web.BaseRequest, member_http_addresses: list[str]) -> dict[str, str]:
    """The headers that let a member's dashboard page read this answer (none for any other
    origin, or for a request from the same origin, which sends no ``Origin``)."""
    origin = request.headers.get("Origin")
    if origin is None or not origin_allowed(origin, member_http_addresses):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(request: web.BaseRequest, member_http_addresses: list[str]) -> dict[str, str]:
    """The answer to a CORS preflight from a member's dashboard page: it may send a GET with
    an ``Authorization`` header (its bearer token). None for any other origin, whose browser
    then refuses to send the request."""
    allowed = cors_headers(request, member_http_addresses)
    if not allowed:
        return {}
    return {
        **allowed,
        "Access-Control-Allow-Methods": "GET",
        "Access-Control-Allow-Headers": "Authorization",
        "Access-Control-Max-Age": "600",
    }


def with_member_cors(member_http_addresses: Callable[[], list[str]], handler: Handler) -> Handler:
    """`handler` (one that does not stream), answering a member's dashboard page across
    origins (see the module docstring)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.update(cors_headers(request, member_http_addresses()))
        return response

    return handle
