"""Server hardening for the Gradio app: which hosts, which files, and how files are served.

Three ASGI middlewares, installed through `Blocks.launch(app_kwargs={"middleware": ...})`
(see `mmchat.ui.app.launch_kwargs`), and the list of paths gradio must never serve:

- `HostGuard` answers 400 to any request whose `Host` header is not one of the configured
  names (127.0.0.1, localhost, the bound host, `[server] allowed_hosts`): a page on another
  site that rebinds its DNS name to 127.0.0.1 cannot reach the app.
- `SafeFileResponses` makes everything served from gradio's file routes (`/file=`,
  `/proxy=`) inert: anything but raster images, audio and video becomes a download
  (`Content-Disposition: attachment`, `application/octet-stream`), and every such response
  carries `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`, so an
  uploaded .html or .svg never runs script on the app's origin.
- `UploadLimitMessage` rewrites gradio's 413 "File size exceeded maximum allowed size of N
  bytes." so it names the file and the limit in MB.
- `OutsideAppDirs` is gradio's `blocked_paths`: gradio lets an app hand out any file in the
  working directory and the system temp folder; this list blocks everything there except the
  app's own directories (recomputed at each check, so files created later are blocked too).

It does not decide what the app's own directories are (`launch_kwargs` does) and holds no
UI. Imports neither gradio nor torch.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

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
        name = upload_file_name(head) or "the file"
        size = _header(scope, b"content-length")
        limit = f"{self.max_bytes / (1024 * 1024):.0f} MB"
        if size.isdigit():
            return f"{name} is {int(size) / (1024 * 1024):.1f} MB; uploads are limited to {limit} each"
        return f"{name} is larger than the upload limit of {limit}"

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


class OutsideAppDirs(list):
    """Gradio `blocked_paths`: every entry of `roots` (the working directory and the system
    temp folder) that neither lies in nor leads to one of the `keep` directories.

    Gradio reads `blocked_paths` by iterating it at each check; iterating this list lists the
    roots afresh, so a file created in the temp folder after launch is blocked too. Blocked
    paths take precedence over allowed ones in gradio, hence blocking around `keep`, not
    above it.
    """

    def __init__(self, roots: Iterable[str | Path], keep: Iterable[str | Path]) -> None:
        self.roots = sorted({_resolved(r) for r in roots})
        self.keep = sorted({_resolved(k) for k in keep})
        super().__init__(str(r) for r in self.roots)  # never empty: gradio tests truthiness

    def __iter__(self) -> Iterator[str]:
        return iter(self.current())

    def current(self) -> list[str]:
        blocked: list[str] = []
        for root in self.roots:
            self._walk(root, blocked)
        return blocked

    def _walk(self, directory: Path, blocked: list[str]) -> None:
        if any(_inside(directory, k) for k in self.keep):
            return
        try:
            children = list(directory.iterdir())
        except OSError:
            blocked.append(str(directory))
            return
        for child in children:
            real = _resolved(child)
            if any(_inside(real, k) for k in self.keep):
                continue
            if any(_inside(k, real) for k in self.keep):
                # Leads to a kept directory. Gradio resolves links on both sides, so a link is
                # left out (blocking it would block its target): its target is walked where it
                # lies, and a target outside the roots is not served by gradio at all.
                if not child.is_symlink():
                    self._walk(real, blocked)
            else:
                blocked.append(str(child))

    def __repr__(self) -> str:
        return f"OutsideAppDirs(roots={[str(r) for r in self.roots]}, keep={[str(k) for k in self.keep]})"

