"""The endpoint layer: what the library's own endpoints share, framework- and signal-agnostic.

One request type (:class:`Request`: method, path, bounded case-insensitive
:class:`Headers`, raw query, the client address through the trusted proxies,
a body reader that stops at a byte cap whatever ``Content-Length`` says) and
one response type (:class:`Response`, ``(status, headers, body)``); one
credentials check (:class:`Credentials`, bearer and basic, constant time);
one ``Accept``/``Accept-Encoding`` negotiation (:func:`negotiate`); CORS and
``OPTIONS`` in one place (:class:`CorsPolicy`); and one table from configured
paths to handlers (:func:`build_endpoints`), whose entries answer with
:meth:`Endpoint.dispatch` / :meth:`Endpoint.adispatch` and never raise.

An endpoint kind (``metrics``, the health probes, next the RUM ingestion
endpoint and the RUM script) is declared once as an :class:`EndpointKind`
next to its handler and registered with :func:`register_endpoint`; every
adapter (Flask, Starlette/FastAPI, Django, the separate metrics listener)
then serves it, because the adapters only translate their framework's request
into a :class:`Request` and a :class:`Response` back.

This module is a foundation: it imports the standard library and
:mod:`~mestres_observability.errors` only. Handlers receive the instance they
were bound to (``context``) as an opaque value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import ConfigurationError

__all__ = [
    "GZIP",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "SAME_ORIGIN",
    "BodyError",
    "BodyTooLarge",
    "CorsPolicy",
    "Credentials",
    "Endpoint",
    "EndpointKind",
    "Fault",
    "Headers",
    "IncompleteBody",
    "Offer",
    "Request",
    "Response",
    "build_endpoints",
    "challenge",
    "client_address",
    "endpoint_kind",
    "endpoint_kinds",
    "is_trusted",
    "negotiate",
    "parse_networks",
    "parse_ranges",
    "register_endpoint",
    "text_response",
    "unregister_endpoint",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

#: At most this many header lines are read from a request (the rest are ignored).
MAX_HEADERS = 128
#: Header values longer than this are cut (no library endpoint needs more).
MAX_HEADER_VALUE = 8192
_CHUNK = 65536
_TEXT = ("Content-Type", "text/plain; charset=utf-8")


# ---------------------------------------------------------------------- response
class Response(NamedTuple):
    """``(status, headers, body)`` of a library endpoint, for any framework to send as is.

    A tuple, so ``status, headers, body = response`` works too.

    Attributes:
        status: the HTTP status code.
        headers: the response headers as ``(name, value)`` pairs.
        body: the body bytes (empty for ``HEAD``).
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def text_response(status: int, text: str, *extra: tuple[str, str]) -> Response:
    """A ``text/plain`` response with ``extra`` headers after the content type."""
    return Response(status, [_TEXT, *extra], text.encode())


# ---------------------------------------------------------------------- trusted proxies
def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """The ``trusted_proxies`` setting as networks.

    Raises:
        ConfigurationError: an entry is neither an IP address nor a CIDR range.
    """
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigurationError(
                "trusted_proxies", entry, "each entry must be an IP address or a CIDR range"
            ) from None
    return tuple(nets)


def is_trusted(address: str, nets: tuple[Network, ...]) -> bool:
    """True when ``address`` is a valid IP inside one of ``nets``."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in n for n in nets)


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    trusted: tuple[Network, ...],
) -> str | None:
    """The client's address: ``peer``, or from ``X-Forwarded-For`` when ``peer`` is trusted.

    The header is read right to left, skipping trusted proxies; the first
    untrusted valid address is the client. Anything unparsable stops the walk,
    so a client cannot smuggle an address past an untrusted hop.
    """
    if not trusted or not forwarded_for or peer is None or not is_trusted(peer, trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for[:2048].split(",")):
        hop = hop.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client
        client = hop
        if not is_trusted(hop, trusted):
            return hop
    return client


# ---------------------------------------------------------------------- request
class Headers(Mapping[str, str]):
    """Request headers: case-insensitive names, the first value of a repeated name wins.

    Bounded: at most :data:`MAX_HEADERS` lines are read and values are cut at
    :data:`MAX_HEADER_VALUE` characters.
    """

    __slots__ = ("_items",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        items: dict[str, str] = {}
        for n, (name, value) in enumerate(pairs):
            if n >= MAX_HEADERS:
                break
            key = name.lower()
            if key not in items:
                items[key] = value[:MAX_HEADER_VALUE]
        self._items = items

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> Headers:
        """The headers of a WSGI environ (or Django's ``request.META``)."""
        return cls(_environ_pairs(environ))

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """The headers of an ASGI scope (``scope["headers"]``, latin-1 bytes)."""
        return cls((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        """The value of header ``name`` (any case), else ``default``."""
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _environ_pairs(environ: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-"), value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-"), value


class BodyError(ValueError):
    """The request body cannot be read as asked; :attr:`status` is the answer to send."""

    status = 400

    def response(self) -> Response:
        """The plain-text answer for this error."""
        return text_response(self.status, f"{self}\n")


class BodyTooLarge(BodyError):
    """The body is longer than the cap (or its ``Content-Length`` says so): answered with 413."""

    status = 413

    def __init__(self, cap: int, declared: int | None = None) -> None:
        self.cap = cap
        self.declared = declared
        super().__init__(f"request body larger than {cap} bytes")


class IncompleteBody(BodyError):
    """The client went away before the end of the body: answered with 400."""

    def __init__(self) -> None:
        super().__init__("incomplete request body")


class Request:
    """One request to a library endpoint, whatever framework received it.

    Args:
        method: the method as sent.
        path: the path the endpoint table matched (no query string).
        headers: the request headers (a :class:`Headers`, or pairs to build one).
        query: the raw query string.
        peer: the connected peer's address.
        trusted: the trusted proxies (:func:`parse_networks`), for :attr:`client`.
        read: a blocking ``read(n) -> bytes`` of the body (``wsgi.input.read``),
            or ``None`` when there is no body to read.
        receive: the ASGI ``receive`` callable, for :meth:`aread_body`.

    Attributes:
        routes: set by the adapter that serves the request: ``routes(path)``
            gives the route template of the app's route that URL path
            (script prefix included) would reach, or ``None`` (the RUM
            endpoint groups pages by it). ``None`` when the adapter knows no routes.
    """

    __slots__ = ("_body", "_client", "_read", "_receive", "_trusted", "headers", "method",
                 "path", "peer", "query", "routes")

    def __init__(self, method: str, path: str,
                 headers: Headers | Iterable[tuple[str, str]] = (), *, query: str = "",
                 peer: str | None = None, trusted: tuple[Network, ...] = (),
                 read: Callable[[int], bytes] | None = None,
                 receive: Receive | None = None) -> None:
        self.method = method
        self.path = path
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.query = query
        self.peer = peer
        self._trusted = trusted
        self._client: Any = _UNSET
        self._read = read
        self._receive = receive
        self._body: bytes | None = None
        self.routes: Callable[[str], str | None] | None = None

    @classmethod
    def from_wsgi(cls, environ: Mapping[str, Any], path: str,
                  trusted: tuple[Network, ...] = ()) -> Request:
        """A request from a WSGI environ (Django's ``request.META`` works too, without a body).

        The body is readable when the environ declares a ``CONTENT_LENGTH`` or
        ``wsgi.input_terminated`` (a chunked body the server ends itself), as
        PEP 3333 asks; otherwise it is empty.
        """
        stream = environ.get("wsgi.input")
        read = None
        if stream is not None and (environ.get("CONTENT_LENGTH")
                                   or environ.get("wsgi.input_terminated")):
            read = stream.read
        return cls(environ.get("REQUEST_METHOD", "GET"), path, Headers.from_environ(environ),
                   query=environ.get("QUERY_STRING", ""), peer=environ.get("REMOTE_ADDR"),
                   trusted=trusted, read=read)

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any], receive: Receive | None, path: str,
                  trusted: tuple[Network, ...] = ()) -> Request:
        """A request from an ASGI HTTP scope; the body is read through ``receive``."""
        client = scope.get("client")
        query = scope.get("query_string", b"")
        return cls(scope.get("method", "GET"), path, Headers.from_asgi(scope.get("headers", ())),
                   query=query.decode("latin-1") if query else "",
                   peer=client[0] if client else None, trusted=trusted, receive=receive)

    @property
    def client(self) -> str | None:
        """The client's address: the peer, or ``X-Forwarded-For`` behind trusted proxies."""
        if self._client is _UNSET:
            self._client = client_address(self.peer, self.headers.get("x-forwarded-for"),
                                          self._trusted)
        return self._client  # type: ignore[no-any-return]

    @property
    def content_length(self) -> int | None:
        """The declared ``Content-Length``; ``None`` when absent or not a valid number."""
        value = self.headers.get("content-length")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            return None
        return int(value)

    @property
    def has_async_body(self) -> bool:
        """True when the body is still to be read through ASGI ``receive``."""
        return self._body is None and self._receive is not None

    def _cached(self, cap: int) -> bytes:
        body = self._body
        assert body is not None
        if len(body) > cap:
            raise BodyTooLarge(cap, len(body))
        return body

    def read_body(self, cap: int) -> bytes:
        """The body, at most ``cap`` bytes (blocking).

        Never reads past ``cap`` whatever ``Content-Length`` says: a declared
        length above the cap is refused without reading; a declared length
        below the real body reads only the declared bytes (that is the body
        HTTP framing defines); without one, reading stops one byte past the cap.

        Raises:
            BodyTooLarge: the body (or its declared length) is over ``cap``.
            RuntimeError: the body is only readable with :meth:`aread_body`.
        """
        if self._body is not None:
            return self._cached(cap)
        read = self._read
        if read is None:
            if self._receive is not None:
                raise RuntimeError("the body of an ASGI request is read with aread_body()")
            self._body = b""
            return self._body
        declared = self.content_length
        if declared is not None and declared > cap:
            raise BodyTooLarge(cap, declared)
        limit = cap + 1 if declared is None else declared
        chunks: list[bytes] = []
        total = 0
        while total < limit:
            chunk = read(min(_CHUNK, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        body = b"".join(chunks)
        if len(body) > limit:  # a stream that returned more than asked
            body = body[:limit]
        if len(body) > cap:
            raise BodyTooLarge(cap, declared)
        self._read = None
        self._body = body
        return body

    async def aread_body(self, cap: int) -> bytes:
        """The body, at most ``cap`` bytes, read from ASGI ``receive`` (same rules as :meth:`read_body`).

        A request without ``receive`` (Django under ASGI has the body in memory
        already) is read with :meth:`read_body`.

        Raises:
            BodyTooLarge: the body (or its declared length) is over ``cap``.
            IncompleteBody: the client disconnected before the end of the body.
        """
        if self._body is not None:
            return self._cached(cap)
        receive = self._receive
        if receive is None:
            return self.read_body(cap)
        declared = self.content_length
        if declared is not None and declared > cap:
            raise BodyTooLarge(cap, declared)
        limit = cap if declared is None else declared
        chunks: list[bytes] = []
        total = 0
        self._receive = None  # consumed, whatever happens next
        while True:
            message = await receive()
            mtype = message.get("type")
            if mtype == "http.disconnect":
                raise IncompleteBody()
            if mtype != "http.request":
                continue
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                if declared is None:
                    raise BodyTooLarge(cap, None)
                chunks.append(chunk[:len(chunk) - (total - limit)])  # past the declared length
                break
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self._body = b"".join(chunks)
        return self._body

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.path!r})"


_UNSET: Any = object()


# ---------------------------------------------------------------------- credentials
def challenge(scheme: str, realm: str) -> str:
    """The ``WWW-Authenticate`` value of a 401 answer: ``Bearer realm="metrics"``."""
    return f'{"Bearer" if scheme.lower() == "bearer" else "Basic"} realm="{realm}"'


class Credentials:
    """An ``Authorization`` check: a bearer token or basic ``user:password``, in constant time.

    Args:
        scheme: ``"bearer"`` or ``"basic"``.
        secret: the token, or ``"user:password"``.
        realm: the realm named in the ``WWW-Authenticate`` challenge.

    Example:
        >>> c = Credentials("bearer", "s3cret", realm="metrics")
        >>> c.check("Bearer s3cret"), c.check("Bearer nope"), c.challenge
        (True, False, 'Bearer realm="metrics"')
    """

    __slots__ = ("_secret", "challenge", "realm", "scheme")

    def __init__(self, scheme: str, secret: str, realm: str) -> None:
        scheme = scheme.lower()
        if scheme not in ("bearer", "basic"):
            raise ValueError(f"credentials scheme must be 'bearer' or 'basic', got {scheme!r}")
        self.scheme = scheme
        self.realm = realm
        self._secret = secret.encode("utf-8")
        #: The ``WWW-Authenticate`` value of a 401 answer.
        self.challenge = challenge(scheme, realm)

    @classmethod
    def of(cls, pair: tuple[str, str] | None, realm: str) -> Credentials | None:
        """From a ``(scheme, secret)`` setting (``None``: no protection)."""
        return None if pair is None else cls(pair[0], pair[1], realm)

    def check(self, authorization: str | None) -> bool:
        """True when the ``Authorization`` header value carries these credentials.

        The scheme is case-insensitive; the secret is compared with
        :func:`hmac.compare_digest`. Never raises.
        """
        if not authorization or not isinstance(authorization, str):
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != self.scheme:
            return False
        if self.scheme == "bearer":
            return hmac.compare_digest(value.encode("utf-8", "replace"), self._secret)
        try:
            given = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return False
        return hmac.compare_digest(given, self._secret)

    def unauthorized(self) -> Response:
        """The plain-text 401 answer with the challenge."""
        return Response(401, [("WWW-Authenticate", self.challenge), _TEXT,
                              ("Cache-Control", "no-store")], b"unauthorized\n")

    def __repr__(self) -> str:
        return f"Credentials({self.scheme!r}, [REDACTED], realm={self.realm!r})"


# ---------------------------------------------------------------------- negotiation
_MAX_RANGES = 64


def parse_ranges(header: str | None, limit: int = 4096
                 ) -> list[tuple[str, dict[str, str], float]]:
    """``(range, params, q)`` of each element of an ``Accept``-style header.

    At most ``limit`` characters and 64 elements are read. Ranges and
    parameter names are lower-cased; a ``q`` that is not a number in
    ``[0, 1]`` counts as 0. Never raises.
    """
    out: list[tuple[str, dict[str, str], float]] = []
    if not header:
        return out
    for part in header[:limit].split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        if not media:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            k = k.strip().lower()
            v = v.strip().strip('"')
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
            else:
                params[k] = v
        out.append((media, params, q))
        if len(out) >= _MAX_RANGES:
            break
    return out


@dataclass(frozen=True)
class Offer:
    """One representation an endpoint can produce, for :func:`negotiate`.

    Args:
        names: the media type (``"application/openmetrics-text"``) or content
            coding (``"gzip"``) and its aliases, lower case.
        params: parameters a range must carry to match, each with its accepted
            values (``""``: the parameter absent), e.g. ``{"version": {"", "1.0.0"}}``.
        wildcard: whether ``type/*`` and ``*/*`` (``*`` for codings) reach it;
            ``False`` for a representation clients must ask for by name.
    """

    names: frozenset[str]
    params: Mapping[str, frozenset[str]] = field(default_factory=dict)
    wildcard: bool = True

    def specificity(self, media: str, params: Mapping[str, str]) -> int:
        """How precisely range ``media`` names this offer: 3 exact, 2 ``type/*``, 1 ``*``, 0 not."""
        if media in self.names:
            for key, allowed in self.params.items():
                if params.get(key, "") not in allowed:
                    return 0
            return 3
        if not self.wildcard:
            return 0
        if media in ("*/*", "*"):
            return 1
        if media.endswith("/*") and any(n.startswith(media[:-1]) for n in self.names):
            return 2
        return 0


#: The gzip content coding (``x-gzip`` too), asked for by name only.
GZIP = Offer(frozenset({"gzip", "x-gzip"}), wildcard=False)


def negotiate(header: str | None, offers: tuple[Offer, ...], *,
              limit: int = 4096) -> Offer | None:
    """The offer ``header`` (``Accept`` or ``Accept-Encoding``) prefers, or ``None``.

    Each offer takes the ``q`` of the most specific range that names it (the
    highest ``q`` among equally specific ones); the highest ``q`` wins and a
    tie goes to the earlier offer (the server's preference). ``None`` when
    the header is absent or accepts no offer (``q=0``); the caller then
    serves its default. Never raises.
    """
    if not header:
        return None
    best_spec = [0] * len(offers)
    best_q = [0.0] * len(offers)
    for media, params, q in parse_ranges(header, limit):
        for i, offer in enumerate(offers):
            spec = offer.specificity(media, params)
            if spec == 0 or spec < best_spec[i]:
                continue
            if spec > best_spec[i] or q > best_q[i]:
                best_spec[i] = spec
                best_q[i] = q
    chosen: Offer | None = None
    top = 0.0
    for i, offer in enumerate(offers):
        if best_q[i] > top:
            chosen, top = offer, best_q[i]
    return chosen


# ---------------------------------------------------------------------- CORS
@dataclass(frozen=True)
class CorsPolicy:
    """Which other origins may call an endpoint from a browser.

    The default (:data:`SAME_ORIGIN`) allows none: no CORS header is ever
    sent and ``OPTIONS`` is not answered unless the kind lists it. With
    origins, responses to an allowed ``Origin`` carry
    ``Access-Control-Allow-Origin`` (and ``Vary: Origin``), and a preflight
    (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed
    origin gets the allowed methods and headers; a disallowed origin gets no
    CORS header at all, so the browser refuses the call.

    Args:
        origins: allowed origins (``"https://shop.example"``), or ``"*"`` for any.
        headers: request headers a preflight may ask for.
        expose: response headers the browser may show to the page.
        max_age: seconds a browser may cache a preflight answer.
        credentials: allow cookies / HTTP auth (not with ``"*"``).
    """

    origins: frozenset[str] = frozenset()
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age: int = 600
    credentials: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "origins",
                           frozenset(o.strip().rstrip("/").lower() for o in self.origins))
        if self.credentials and "*" in self.origins:
            raise ValueError("CORS credentials cannot be allowed for any origin ('*')")

    @property
    def active(self) -> bool:
        """True when some other origin is allowed."""
        return bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        """True when ``origin`` (the ``Origin`` header) may call the endpoint."""
        if not origin or not self.origins:
            return False
        return "*" in self.origins or origin.strip().rstrip("/").lower() in self.origins

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if "*" in self.origins:
            return [("Access-Control-Allow-Origin", "*")]
        out = [("Access-Control-Allow-Origin", origin.strip())]
        if self.credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        return out

    def apply(self, origin: str | None, headers: list[tuple[str, str]]) -> None:
        """Add the CORS headers of an actual (non-preflight) response to ``headers``."""
        if not self.origins:
            return
        if "*" not in self.origins:
            _add_vary(headers, "Origin")
        if self.allows(origin):
            assert origin is not None
            headers.extend(self._origin_headers(origin))
            if self.expose:
                headers.append(("Access-Control-Expose-Headers", ", ".join(self.expose)))

    def preflight(self, req: Request, allow: str) -> Response:
        """The ``204`` answer to an ``OPTIONS`` request (``Allow``; CORS headers when allowed)."""
        headers = [("Allow", allow)]
        origin = req.headers.get("origin")
        if self.origins and "*" not in self.origins:
            headers.append(("Vary", "Origin"))
        if req.headers.get("access-control-request-method") and self.allows(origin):
            headers.extend(self._origin_headers(origin))
            headers.append(("Access-Control-Allow-Methods", allow))
            if self.headers:
                headers.append(("Access-Control-Allow-Headers", ", ".join(self.headers)))
            headers.append(("Access-Control-Max-Age", str(self.max_age)))
        return Response(204, headers, b"")


#: No cross-origin access (the default of every endpoint kind).
SAME_ORIGIN = CorsPolicy()


def _add_vary(headers: list[tuple[str, str]], name: str) -> None:
    for i, (k, v) in enumerate(headers):
        if k.lower() == "vary":
            if name.lower() not in (p.strip().lower() for p in v.split(",")):
                headers[i] = (k, f"{v}, {name}")
            return
    headers.append(("Vary", name))


# ---------------------------------------------------------------------- endpoint table
Handler = Callable[[Any, Request], Response]
AsyncHandler = Callable[[Any, Request], Awaitable[Response]]


@dataclass(frozen=True)
class Fault:
    """How a handler's fault is counted and answered.

    Args:
        kind: the fault kind counted under ``component`` (``"metrics_endpoint"``).
        message: the log message.
        response: the generic answer (no detail of the fault).
        component: the ``mestres_observability_errors_total`` component.
    """

    kind: str = "endpoint"
    message: str = "library endpoint failed"
    response: Response = Response(500, [_TEXT, ("Cache-Control", "no-store")],
                                  b"internal error\n")
    component: str = "http"


@dataclass(frozen=True)
class EndpointKind:
    """One kind of library endpoint: where it is served, what answers, how it fails.

    Args:
        name: unique name (``"metrics"``, ``"readiness"``).
        paths: ``paths(config)``: the configured paths it is served at (empty
            or ``None`` entries are skipped).
        handler: ``handler(context, request) -> Response``, blocking; the
            context is the instance the table was built for.
        ahandler: the async handler; ``None`` runs :attr:`handler` in a worker
            thread under :meth:`Endpoint.adispatch`.
        methods: the methods answered (others get 405 with ``Allow``).
            ``HEAD`` answers like ``GET`` without the body.
        cors: the cross-origin policy (default: same origin only), or
            ``cors(config) -> CorsPolicy`` for an allowlist that is a setting.
        max_body: the body cap the handler reads with, or ``max_body(config)``;
            when the sync handler runs in a thread for an ASGI request, the
            body is read up to it first (0: the kind reads no body).
        fault: how a handler's exception is counted and answered.
        route_name: the name given to its route where frameworks name routes
            (Django URL names); default :attr:`name`.
        measured: ``None`` (default): while ``excluded_paths`` is unset, its
            requests are neither measured, traced nor logged, like ``/metrics``.
            Else ``measured(config) -> (server_spans, access_log)``: its
            requests are counted in the HTTP metrics under their own path, and
            get a SERVER span and an access-log line only where those are true
            (unless ``excluded_paths`` names the path).
    """

    name: str
    paths: Callable[[Any], Iterable[str | None]]
    handler: Handler
    ahandler: AsyncHandler | None = None
    methods: tuple[str, ...] = ("GET", "HEAD")
    cors: CorsPolicy | Callable[[Any], CorsPolicy] = SAME_ORIGIN
    max_body: int | Callable[[Any], int] = 0
    fault: Fault = Fault()
    route_name: str = ""
    measured: Callable[[Any], tuple[bool, bool]] | None = None

    @property
    def url_name(self) -> str:
        """:attr:`route_name`, or :attr:`name` when unset."""
        return self.route_name or self.name

    def policy(self, config: Any) -> CorsPolicy:
        """The CORS policy under ``config``."""
        return self.cors if isinstance(self.cors, CorsPolicy) else self.cors(config)

    def body_cap(self, config: Any) -> int:
        """The body cap under ``config``."""
        return self.max_body if isinstance(self.max_body, int) else self.max_body(config)


class Endpoint:
    """An :class:`EndpointKind` bound to a path and a context: what the table holds.

    :meth:`dispatch` and :meth:`adispatch` never raise an :class:`Exception`:
    a wrong method gets 405 with ``Allow``, an unreadable body 413/400, and a
    handler fault the kind's :class:`Fault` answer, counted in
    ``context.faults``.

    Args:
        kind: what to serve.
        path: where it is served.
        context: handed to the handlers (the instance); ``context.faults``
            counts their faults.
        config: resolves a kind's ``cors``/``max_body`` given as functions.
    """

    __slots__ = ("_methods", "_options", "allow", "context", "cors", "kind", "max_body", "path")

    def __init__(self, kind: EndpointKind, path: str, context: Any, config: Any = None) -> None:
        self.kind = kind
        self.path = path
        self.context = context
        #: The CORS policy in force.
        self.cors = kind.policy(config)
        #: The body cap in force (0: no body).
        self.max_body = kind.body_cap(config)
        self._methods = frozenset(kind.methods)
        self._options = "OPTIONS" in self._methods or self.cors.active
        methods = [m for m in kind.methods if m != "OPTIONS"]
        if self._options:
            methods.append("OPTIONS")
        #: The ``Allow`` header value.
        self.allow = ", ".join(methods)

    def _early(self, req: Request) -> Response | None:
        """The answer that needs no handler: 405, or ``OPTIONS``/preflight."""
        method = req.method
        if method in self._methods and method != "OPTIONS":
            return None
        if method == "OPTIONS" and self._options:
            return self.cors.preflight(req, self.allow)
        return Response(405, [("Allow", self.allow), _TEXT], b"method not allowed\n")

    def _finish(self, req: Request, resp: Response) -> Response:
        status, headers, body = resp
        headers = list(headers)  # a fresh list: adapters append to it
        if self.cors.active and req.method != "OPTIONS":
            self.cors.apply(req.headers.get("origin"), headers)
        if req.method == "HEAD":
            body = b""
        return Response(status, headers, body)

    def _fault(self, req: Request, exc: BaseException) -> Response:
        fault = self.kind.fault
        with contextlib.suppress(Exception):  # the reporter does not raise; never let it
            self.context.faults.report(fault.component, fault.kind, fault.message, exc)
        status, headers, body = fault.response
        return Response(status, list(headers), b"" if req.method == "HEAD" else body)

    def dispatch(self, req: Request) -> Response:
        """Answer ``req`` (blocking; WSGI servers, Django sync, the metrics listener)."""
        try:
            early = self._early(req)
            if early is not None:
                return self._finish(req, early)
            return self._finish(req, self.kind.handler(self.context, req))
        except BodyError as exc:
            return self._finish(req, exc.response())
        except Exception as exc:
            return self._fault(req, exc)

    async def adispatch(self, req: Request) -> Response:
        """Answer ``req`` without blocking the event loop (ASGI, Django async)."""
        try:
            early = self._early(req)
            if early is not None:
                return self._finish(req, early)
            kind = self.kind
            if kind.ahandler is not None:
                resp = await kind.ahandler(self.context, req)
            else:
                if self.max_body and req.has_async_body:
                    await req.aread_body(self.max_body)
                loop = asyncio.get_running_loop()
                resp = await loop.run_in_executor(None, kind.handler, self.context, req)
            return self._finish(req, resp)
        except BodyError as exc:
            return self._finish(req, exc.response())
        except Exception as exc:
            return self._fault(req, exc)

    def __repr__(self) -> str:
        return f"Endpoint({self.kind.name!r}, {self.path!r})"


_KINDS: dict[str, EndpointKind] = {}


def register_endpoint(kind: EndpointKind) -> EndpointKind:
    """Add (or replace, in place) an endpoint kind; every adapter then serves it.

    Register at import time, before the instance whose table should hold it is
    initialised (a table is built once per instance). Where two kinds share a
    path, the one registered first is served.
    """
    _KINDS[kind.name] = kind
    return kind


def unregister_endpoint(name: str) -> None:
    """Remove an endpoint kind (tests); unknown names are ignored."""
    _KINDS.pop(name, None)


def endpoint_kinds() -> tuple[EndpointKind, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS.values())


def endpoint_kind(name: str) -> EndpointKind | None:
    """The registered kind called ``name``, or ``None``."""
    return _KINDS.get(name)


def build_endpoints(config: Any, context: Any,
                    kinds: Iterable[EndpointKind] | None = None) -> dict[str, Endpoint]:
    """The path table: each configured path of each kind (registered ones by default).

    Looked up with one ``dict.get(path)`` per request.
    """
    table: dict[str, Endpoint] = {}
    for kind in endpoint_kinds() if kinds is None else kinds:
        for path in kind.paths(config):
            if path and path not in table:
                table[path] = Endpoint(kind, path, context, config)
    return table
