"""Server hardening for the Gradio app: which hosts, which files, and how files are served.

Three ASGI middlewares, installed through `Blocks.launch(app_kwargs={"middleware": ...})`
(see `mmchat.ui.app.launch_kwargs`), and a guard on which files gradio may hand out:

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
from typing import Any, Iterable, Sequence

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
