"""The web app's security rules, in one ASGI middleware and two checks.

- **Bind**: loopback only (127.0.0.1, ::1, localhost) unless the caller allows another address
  explicitly; then a warning is returned for the command to print (:func:`check_bind`).
- **Host allowlist** (against DNS rebinding): a request whose ``Host`` header is not one of the
  addresses the server was started for gets 403.
- **Per-session token**: made at start; the URL printed once carries it as ``?token=``; the first
  request with it sets an HttpOnly, SameSite=Strict cookie. Any request without the cookie (or an
  ``Authorization: Bearer`` header) gets 401.
- **Origin check**: a state-changing request (POST, PUT, PATCH, DELETE) must carry an ``Origin``
  that is the server's own; otherwise 403 (a page on another site cannot drive the app).
- **Headers** on every response: ``Content-Security-Policy: default-src 'self'; img-src 'self'
  data:`` (no inline or remote script or style; images from the app or ``data:``, which is how
  plotly draws heatmaps; an image cannot run code), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  no-referrer``, ``X-Frame-Options: DENY``.

Artifacts are served by store id only (:func:`mechscope.web.app.artifact_file`), never by a path
taken from the request.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from mechscope.autointerp.backends.server import is_loopback
from mechscope.errors import ConfigError

# The names a request to a loopback server may carry in its Host header.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
COOKIE = "mechscope_token"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADERS = ((b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY"))


def check_bind(host: str, allow_remote: bool = False) -> str | None:
    """None for a loopback ``host``; a warning to print for another one when ``allow_remote``;
    a ConfigError otherwise (0.0.0.0 included)."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"host must be an address such as 127.0.0.1; got {host!r}")
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigError(f"--host {host} is not a loopback address; mechscope serve listens only on 127.0.0.1, ::1 or "
                          "localhost unless --allow-remote is given as well")
    return (f"warning: listening on {host}: anyone who can reach this address and has the token can use the app "
            "(and steer the model); keep the token private")


@dataclass
class Guard:
    """The rules for one server: its ``hosts`` (host or host:port values the Host header may
    hold), its ``origins`` (scheme://host:port) and its session ``token``."""

    hosts: frozenset[str]
    origins: frozenset[str]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def for_address(cls, host: str, port: int, token: str | None = None) -> Guard:
        names = {host, *LOOPBACK_NAMES} if is_loopback(host) else {host}
        bracketed = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
        hosts = frozenset({f"{n}:{port}" for n in bracketed} | bracketed)
        origins = frozenset(f"http://{n}:{port}" for n in bracketed)
        return cls(hosts, origins, token or secrets.token_urlsafe(32))

    def _matches(self, offered: str | None) -> bool:
        # Compared as bytes: compare_digest refuses str with non-ASCII characters.
        return offered is not None and hmac.compare_digest(offered.encode("utf-8", "replace"), self.token.encode())

    def has_token(self, headers: dict[bytes, bytes], query: str) -> tuple[bool, bool]:
        """(authorised, came in the query string: set the cookie)."""
        if self._matches(parse_qs(query).get("token", [None])[0]):
            return True, True
        try:
            cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        except CookieError:  # a malformed Cookie header carries no token
            cookie = SimpleCookie()
        if COOKIE in cookie and self._matches(cookie[COOKIE].value):
            return True, False
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        return bearer.startswith("Bearer ") and self._matches(bearer[7:]), False


class GuardMiddleware:
    """The ASGI middleware that applies a :class:`Guard` to every HTTP request."""

    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # the app has no websockets; none is let through unchecked
            return await send({"type": "websocket.close", "code": 1008})
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if host not in self.guard.hosts:
            return await _plain(send, 403, f"forbidden: Host {host!r} is not this server's address")
        authorised, from_query = self.guard.has_token(headers, scope.get("query_string", b"").decode("latin-1"))
        if not authorised:
            return await _plain(send, 401, "unauthorised: open the URL mechscope serve printed (it carries the token)")
        if scope["method"] in STATE_CHANGING:
            origin = headers.get(b"origin", b"").decode("latin-1")
            if origin not in self.guard.origins:
                return await _plain(send, 403, f"forbidden: a {scope['method']} from origin {origin or 'none'!r}")

        async def secured(message):
            if message["type"] == "http.response.start":
                extra = list(HEADERS)
                if from_query:
                    extra.append((b"set-cookie", f"{COOKIE}={self.guard.token}; HttpOnly; SameSite=Strict; "
                                                 "Path=/".encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, secured)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *HEADERS]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["COOKIE", "Guard", "GuardMiddleware", "check_bind", "is_loopback"]
