"""Server hardening for the Gradio app: which hosts, which files, and how files are served.

Four ASGI middlewares, installed through `Blocks.launch(app_kwargs={"middleware": ...})`
(see `mmchat.ui.app.launch_kwargs`), and a guard on which files gradio may hand out:

- `HostGuard` answers 400 to any request whose `Host` header is not one of the configured
  names (127.0.0.1, localhost, the bound host, `[server] allowed_hosts`): a page on another
  site that rebinds its DNS name to 127.0.0.1 cannot reach the app.
- `OriginGuard` answers 403 to a browser request sent from another site's page: one whose
  `Origin` header is neither the app's own (the host and port the request was sent to;
  bound to all interfaces, also a configured host name on any port) nor matches
  `[server] allowed_origins` (`origin_patterns`), and a non-GET request without `Origin`
  that the browser marks `Sec-Fetch-Site: cross-site`. A page the user happens to visit
  cannot upload files or queue jobs (`/gradio_api/upload`, `/queue/join`); gradio's own CORS
  handling only hides the answer from such a page, after the work is done. Requests without
  `Origin` (curl, `gradio_client`) pass: they do not come from a page.
- `SafeFileResponses` makes everything served from gradio's file routes (`/file=`,
  `/proxy=`) inert: anything but raster images, audio and video becomes a download
  (`Content-Disposition: attachment`, `application/octet-stream`), and every such response
  carries `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`, so an
  uploaded .html or .svg never runs script on the app's origin.
- `UploadLimitMessage` rewrites gradio's 413 "File size exceeded maximum allowed size of N
  bytes." so it names the file and the limit in MB, in the visitor's language.
- `restrict_file_moves()`: gradio lets an app hand out any file in the working directory and
  the system temp folder; for this app's Blocks only its own directories are accepted.

It does not decide what the app's own directories are (`mmchat.ui.app.served_dirs` does) and
holds no UI. Imports neither gradio (until `restrict_file_moves` runs) nor torch.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence
from urllib.parse import urlsplit

from mmchat.errors import ConfigError
from mmchat.ui.i18n import scope_language, t_in

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ALL_INTERFACES = ("0.0.0.0", "::", "")
# Served inline; everything else from the file routes is a download.
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/x-ms-bmp"}
INLINE_PREFIXES = ("audio/", "video/")
FILE_ROUTE_MARKERS = ("/file=", "/proxy=")


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def host_name(header: str) -> str:
    """`example.com:7860` -> `example.com`; `[::1]:7860` -> `::1`; lower-cased, no final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def allowed_host_names(bound: str, extra: Iterable[str] = (), share: bool = False) -> list[str]:
    """The Host names the app answers: loopback, the bound host, the configured extras."""
    names = list(LOOPBACK_HOSTS)
    if bound and bound not in ALL_INTERFACES:
        names.append(host_name(bound))
    names.extend(host_name(h) if "*" not in h else h.strip().lower() for h in extra if h.strip())
    if share:
        names.append("*.gradio.live")
    return sorted(set(names))


def host_allowed(header: str, allowed: Sequence[str], any_ip: bool = False) -> bool:
    name = host_name(header)
    if not name:
        return False
    if any_ip:  # bound to all interfaces: the machine's addresses work; rebinding needs a name
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
    return any(fnmatch.fnmatchcase(name, pattern) if "*" in pattern else name == pattern for pattern in allowed)


async def _plain(send: Any, status: int, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode("utf-8")
    await send({
        "type": "http.response.start", "status": status,
        "headers": [*headers, (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


class HostGuard:
    """Refuse requests (and websockets) whose Host header is not an allowed name."""

    def __init__(self, app: Any, allowed: Sequence[str], any_ip: bool = False) -> None:
        self.app = app
        self.allowed = [a.lower() for a in allowed]
        self.any_ip = any_ip

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not host_allowed(_header(scope, b"host"), self.allowed, self.any_ip):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            shown = host_name(_header(scope, b"host"))[:80] or "(none)"
            await _plain(send, 400, f"Invalid Host header {shown!r}; this server answers to: {', '.join(self.allowed)} "
                                    "(add a name with [server] allowed_hosts or MMCHAT_ALLOWED_HOSTS)")
            return
        await self.app(scope, receive, send)


DEFAULT_PORTS = {"http": 80, "https": 443}
ORIGIN_FORM = "scheme://host[:port], e.g. 'https://*.hf.space' or 'http://localhost:3000' (port '*': any)"


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_origin(value: str) -> Origin | None:
    """`https://Example.com` -> Origin('https', 'example.com', 443); None for `null` or anything
    that is not a plain http(s) origin (a path, user info, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None
            or parts.password is not None or parts.path not in ("", "/") or parts.query or parts.fragment):
        return None
    return Origin(parts.scheme, parts.hostname.rstrip("."), port or DEFAULT_PORTS[parts.scheme])


class OriginPattern(NamedTuple):
    """One `[server] allowed_origins` entry: schemes (empty: any), a host pattern
    (`*` as in shell patterns), a port (None: the scheme's default; -1: any)."""

    schemes: tuple[str, ...]
    host: str
    port: int | None

    def matches(self, origin: Origin) -> bool:
        if self.schemes and origin.scheme not in self.schemes:
            return False
        if self.port == -1:
            pass
        elif origin.port != (DEFAULT_PORTS[origin.scheme] if self.port is None else self.port):
            return False
        return fnmatch.fnmatchcase(origin.host, self.host)


def origin_patterns(values: Iterable[str]) -> list[OriginPattern]:
    """Parse `[server] allowed_origins`; a malformed entry raises `ConfigError` naming it.

    A pattern without a scheme (`*.hf.space`) matches both http and https; a lone `*` matches
    every origin (switching the check off)."""
    patterns: list[OriginPattern] = []
    for raw in values:
        value = raw.strip().lower().rstrip("/")
        if not value:
            continue
        if value == "*":
            patterns.append(OriginPattern((), "*", -1))
            continue
        scheme, sep, rest = value.partition("://")
        if not sep:
            scheme, rest = "", value
        if rest.startswith("[") and "]" in rest:  # an IPv6 address: [::1]:3000
            host, _, tail = rest[1:].partition("]")
            port_text = (tail[1:] or ":") if tail.startswith(":") else tail + "/" if tail else ""  # junk: refused
        else:
            host, colon, port_text = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
            port_text = port_text or colon  # 'host:' names no port: refused below
        if scheme and scheme not in DEFAULT_PORTS or not host or any(c in host for c in "/@?#[] ") \
                or port_text and not (port_text == "*" or port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ConfigError(f"[server] allowed_origins entry {raw!r} is not an origin; use {ORIGIN_FORM}")
        port = -1 if port_text == "*" else int(port_text) if port_text else None
        patterns.append(OriginPattern((scheme,) if scheme else tuple(DEFAULT_PORTS), host.rstrip("."), port))
    return patterns


def _host_port(header: str) -> int | None:
    """The port a Host header names, None when it names none."""
    header = header.strip()
    tail = header.rsplit("]", 1)[-1] if header.startswith("[") else header
    if tail.count(":") == 1 and tail.rsplit(":", 1)[1].isdigit():
        return int(tail.rsplit(":", 1)[1])
    return None


def _shown(value: str) -> str:
    return "".join(ch for ch in value if ch.isprintable())[:120]


class OriginGuard:
    """Refuse requests (and websockets) sent by another site's page; see the module docstring.

    `hosts`: the names the app answers (`allowed_host_names`); bound to all interfaces
    (`any_ip`), a page served under one of the configured names on another port or scheme
    (a proxy in front) is the app's own too; loopback names are not, there, since another
    local server's page is a different site. `patterns`: `origin_patterns(allowed_origins)`.
    """

    def __init__(self, app: Any, hosts: Sequence[str] = (), any_ip: bool = False,
                 patterns: Sequence[OriginPattern] = ()) -> None:
        self.app = app
        self.named = [h.lower() for h in hosts if h.lower() not in LOOPBACK_HOSTS] if any_ip else []
        self.patterns = list(patterns)

    def own(self, origin: Origin, scope: dict) -> bool:
        """Whether `origin` is the site this request was addressed to: the same host name and
        port as its Host header. The scheme is not compared: behind a TLS-terminating proxy
        (Spaces, share links) the page is https while this server sees http; a Host without a
        port means the browser used its scheme's default one."""
        host = _header(scope, b"host")
        port = _host_port(host)
        if origin.host == host_name(host) and origin.port == (DEFAULT_PORTS[origin.scheme] if port is None else port):
            return True
        return bool(self.named) and host_allowed(origin.host, self.named)

    def refusal(self, scope: dict) -> str | None:
        """Why this request is refused, or None."""
        raw = _header(scope, b"origin")
        if not raw:
            if scope["type"] == "http" and scope.get("method", "GET") not in ("GET", "HEAD") \
                    and _header(scope, b"sec-fetch-site").strip().lower() == "cross-site":
                return ("Cross-site request refused: the browser marked it as sent by another site's page "
                        "(Sec-Fetch-Site: cross-site) and it names no Origin; allow a site with [server] "
                        "allowed_origins or MMCHAT_ALLOWED_ORIGINS")
            return None
        origin = parse_origin(raw)
        if origin is not None and (self.own(origin, scope) or any(p.matches(origin) for p in self.patterns)):
            return None
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        own = f"{scheme}://{_shown(_header(scope, b'host'))}"
        return (f"Cross-origin request refused: origin {_shown(raw)!r} is not this app's own ({own}) and is not in "
                f"[server] allowed_origins. To let pages of that site call this app, add it there "
                f"(allowed_origins = [\"{_shown(raw)}\"]) or to MMCHAT_ALLOWED_ORIGINS (comma-separated)")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            why = self.refusal(scope)
            if why is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
                    return
                await _plain(send, 403, why)
                return
        await self.app(scope, receive, send)


def inline_ok(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime in INLINE_TYPES or mime.startswith(INLINE_PREFIXES)


class SafeFileResponses:
    """Files from gradio's file routes: raster images and media inline, the rest as downloads."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        file_route = any(marker in path for marker in FILE_ROUTE_MARKERS)

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"x-content-type-options",)]
                headers.append((b"x-content-type-options", b"nosniff"))
                if file_route:
                    content_type = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
                    if not inline_ok(content_type):
                        headers = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-disposition")]
                        headers += [(b"content-type", b"application/octet-stream"),
                                    (b"content-disposition", b"attachment")]
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-security-policy"]
                    headers.append((b"content-security-policy", b"sandbox"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


_FILENAME = re.compile(rb'filename\*?=(?:"((?:[^"\\]|\\.)*)"|([^;\r\n]+))')
HEAD_BYTES = 64 * 1024


def upload_file_name(head: bytes) -> str:
    """The first file name in a multipart body's head ('' when none is seen)."""
    match = _FILENAME.search(head)
    if not match:
        return ""
    raw = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
    if raw.lower().startswith(b"utf-8''"):
        from urllib.parse import unquote_to_bytes

        raw = unquote_to_bytes(raw[7:].decode("latin-1"))
    name = raw.decode("utf-8", errors="replace").replace("%22", '"')
    name = "".join(ch for ch in name if ch.isprintable())
    return Path(name.replace("\\", "/")).name[:120]


class UploadLimitMessage:
    """Rewrite the upload route's 413 so it names the file and gives the limit in MB."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def message(self, head: bytes, scope: dict) -> str:
        language = scope_language(scope)  # the visitor's, as for every other message
        name = upload_file_name(head) or t_in(language, "upload.the_file")
        size = _header(scope, b"content-length")
        limit = f"{self.max_bytes / (1024 * 1024):.0f} MB"
        if size.isdigit():
            return t_in(language, "upload.too_big", name=name, size=f"{int(size) / (1024 * 1024):.1f} MB", limit=limit)
        return t_in(language, "upload.over_limit", name=name, limit=limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/upload"):
            await self.app(scope, receive, send)
            return
        head = bytearray()
        pending: dict[str, Any] = {}

        async def receive_wrapper() -> dict:
            message = await receive()
            if message["type"] == "http.request" and len(head) < HEAD_BYTES:
                head.extend(message.get("body", b"")[: HEAD_BYTES - len(head)])
            return message

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 413:
                pending["start"] = message
                return
            if "start" in pending and message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                kept = [(k, v) for k, v in pending.pop("start").get("headers", [])
                        if k.lower() not in (b"content-length", b"content-type")]
                await _plain(send, 413, self.message(bytes(head), scope), kept)
                return
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(str(path))).resolve()


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


SERVED_DIRS_ATTR = "mmchat_served_dirs"


def restrict_file_moves() -> None:
    """Make gradio accept, for an app's outputs, only files in that app's own directories.

    Gradio 6 copies any file an event returns into its cache, and so serves it, when it lies
    in `allowed_paths`, the working directory or the system temp folder
    (`gradio.processing_utils._check_allowed`). `blocked_paths` cannot carve the app's own
    folders out of those two (blocking wins over allowing, and a list of everything else there
    is costly: gradio resolves each entry on every file of every update). So the check is
    wrapped: for a Blocks carrying `mmchat_served_dirs` (set by `mmchat.ui.app.build_app`), a
    file outside those directories and gradio's upload folder is refused before gradio's own
    check runs; other Blocks in the process are untouched. Idempotent.
    """
    from gradio import processing_utils
    from gradio.context import LocalContext
    from gradio.exceptions import InvalidPathError
    from gradio.utils import get_upload_folder

    original = getattr(processing_utils, "_check_allowed", None)
    if original is None:
        import gradio

        raise RuntimeError(f"gradio {gradio.__version__} has no processing_utils._check_allowed; "
                           "mmchat.ui.security needs updating for this gradio version")
    if getattr(original, "mmchat_guard", False):
        return

    def check_allowed(path: str | Path, check_in_upload_folder: bool) -> None:
        blocks = LocalContext.blocks.get(None)
        served = getattr(blocks, SERVED_DIRS_ATTR, None)
        if served is not None and not check_in_upload_folder:
            real = _resolved(path)
            if not any(_inside(real, _resolved(d)) for d in [*served, get_upload_folder()]):
                raise InvalidPathError(f"Cannot move {real} to the gradio cache dir: this app serves files "
                                       f"only from its own directories ({', '.join(map(str, served))})")
        original(path, check_in_upload_folder)

    check_allowed.mmchat_guard = True  # type: ignore[attr-defined]
    processing_utils._check_allowed = check_allowed
