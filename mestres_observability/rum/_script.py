"""Serving the snippet: the packaged ``static/rum.js`` with the settings' defaults filled in."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
from typing import TYPE_CHECKING, Any

from .._endpoint import GZIP, Request, Response, negotiate

if TYPE_CHECKING:
    from ..observability import Observability

__all__ = ["CONFIG_MARKER", "script_source", "script_text", "serve_script"]

#: The literal of the snippet the server replaces by its defaults (valid JavaScript
#: as it is, so a copied file works unchanged).
CONFIG_MARKER = "{}/*cfg*/"


def script_source() -> str:
    """The snippet as shipped in the package (``mestres_observability/rum/static/rum.js``)."""
    return (importlib.resources.files(__package__ or "mestres_observability.rum")
            .joinpath("static").joinpath("rum.js").read_text(encoding="utf-8"))


def script_text(endpoint: str | None, sample_rate: float) -> str:
    """The snippet with ``endpoint`` and ``sample_rate`` as its defaults.

    The script tag's ``data-endpoint`` and ``data-sample-rate`` still win.
    """
    defaults: dict[str, Any] = {"sample": sample_rate}
    if endpoint:
        defaults["endpoint"] = endpoint
    return script_source().replace(CONFIG_MARKER, json.dumps(defaults, separators=(",", ":")), 1)


class _Served:
    __slots__ = ("etag", "gzipped", "plain")

    def __init__(self, text: str) -> None:
        self.plain = text.encode("utf-8")
        self.gzipped = gzip.compress(self.plain, 9, mtime=0)
        self.etag = '"' + hashlib.sha256(self.plain).hexdigest()[:20] + '"'


_cache: tuple[Any, _Served] | None = None


def _served(obs: Observability) -> _Served:
    global _cache
    cfg = obs.config
    cached = _cache
    if cached is not None and cached[0] is cfg:
        return cached[1]
    served = _Served(script_text(cfg.rum_path, cfg.rum_sample_rate))
    _cache = (cfg, served)
    return served


def serve_script(obs: Observability, req: Request) -> Response:
    """``GET``/``HEAD`` of the snippet: cacheable, ``ETag``/``304``, gzip when asked for."""
    served = _served(obs)
    headers = [("Content-Type", "text/javascript; charset=utf-8"),
               ("Cache-Control", "public, max-age=3600"), ("ETag", served.etag),
               ("Vary", "Accept-Encoding"), ("X-Content-Type-Options", "nosniff")]
    match = req.headers.get("if-none-match")
    if match is not None and served.etag in (m.strip() for m in match[:1024].split(",")):
        return Response(304, headers, b"")
    if negotiate(req.headers.get("accept-encoding"), (GZIP,)) is GZIP:
        headers.append(("Content-Encoding", "gzip"))
        return Response(200, headers, served.gzipped)
    return Response(200, headers, served.plain)
