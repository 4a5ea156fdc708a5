"""Uploads -> validated `Attachment`s: content sniffing, size and pixel limits, safe storage.

What this module does:

* takes an uploaded file (a path, or raw bytes) or an in-memory PIL image and decides, by
  *content* (magic bytes and Pillow's parsers, never the file extension), whether it is an
  image in one of `UploadLimits.formats`;
* enforces the limits before doing expensive work: the byte size is checked from `os.stat`
  (or `len`) before the file is read, and the pixel count from the image header before any
  pixel is decoded, so decompression bombs are refused without allocating them; Pillow's own
  `DecompressionBombWarning`/`DecompressionBombError` are turned into `InvalidUpload` too, and
  so is its refusal of oversized compressed PNG metadata (zTXt/iTXt/iCCP), by name; the aspect
  ratio is limited too (`max_aspect_ratio`), since encoders resize the short side up;
* decodes the image fully once, so truncated or corrupt data is refused at upload time rather
  than when the model needs it;
* stores the original bytes inside `store_dir` under their SHA-256 (`<sha256><ext>`), written
  to a temporary file there and moved into place with `os.replace`, so identical uploads are
  deduplicated and the user's file name never becomes part of a path (the size-limited read,
  content sniffing and this store live in `mmchat.files`, shared with knowledge uploads);
* sanitises the original file name for display only (`safe_display_name`).

Every rejection is an `mmchat.errors.InvalidUpload` whose message names the file (by its
display name), says what is wrong and what is accepted.

What it does not do: it does not resize, re-encode or strip metadata from the stored copy,
does not encode images for a model (see `mmchat.vision`), does not delete old uploads, and
imports no torch or gradio. `open_image` reads only the first frame of animated images.
The `warnings` filter used around Pillow is process-global (Python < 3.14); the explicit
pixel checks made beside it do not depend on it, so concurrent calls stay protected.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageOps

from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload
from mmchat.files import human_bytes as _human_bytes
from mmchat.files import read_limited
from mmchat.files import sniff as _sniff
from mmchat.files import store_atomic as _store

__all__ = [
    "Attachment",
    "ingest_upload",
    "ingest_image",
    "safe_display_name",
    "load_attachment",
]

MAX_DISPLAY_NAME = 100
_MAX_EXT_LEN = 16  # longer "extensions" are treated as part of the name when truncating
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Stored-file extension per (normalised) Pillow format name.
_EXTENSIONS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
# Pillow reports some files under a sub-format name; they are the same format to a user.
# (A camera JPEG carrying several pictures opens as "MPO" even when asked for "JPEG".)
_FORMAT_ALIASES = {"MPO": "JPEG"}

# EXIF orientations that swap width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Attachment:
    """One validated image upload, stored by content hash.

    `width`/`height` are the size as displayed, i.e. after the EXIF orientation is applied
    (the size `open_image()` returns).
    """

    sha256: str
    path: Path
    display_name: str
    format: str
    width: int
    height: int
    size_bytes: int

    def open_image(self) -> Image.Image:
        """The image as RGB, fully loaded (first frame; EXIF orientation applied; alpha
        composited onto white). Re-checks the header against decompression bombs."""
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise InvalidUpload(
                f"{self.display_name}: the stored copy cannot be read ({err.strerror or err}); "
                "upload the image again."
            ) from None
        with _bombs_are_errors():
            img = _open_header(data, self.display_name, (self.format,))
            if _displayed_size(img) != (self.width, self.height):
                raise InvalidUpload(
                    f"{self.display_name}: the stored copy has changed since upload "
                    f"({img.width} x {img.height} pixels, expected {self.width} x {self.height}); "
                    "upload the image again."
                )
            _check_pil_bomb_limit(img.size, self.display_name)
            _decode(img, self.display_name, data)
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


# --------------------------------------------------------------------------------------------
# public functions


def safe_display_name(name: str | None) -> str:
    """A file name fit for display: no directories (`/` or `\\`), no control or invisible
    formatting characters, no leading dots or spaces, at most 100 characters (the extension is
    kept when shortening). Empty -> `"upload"`. Never use the result as a path."""
    if name is None:
        return "upload"
    name = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    name = unicodedata.normalize("NFC", name)
    # Last path component for either separator convention.
    name = re.split(r"[/\\]", name)[-1]
    # Drop control (Cc), format (Cf: bidi overrides, zero-width), separator (Zl/Zp),
    # surrogate (Cs) and unassigned (Cn) characters; turn other whitespace into spaces.
    cleaned = []
    for ch in name:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"):
            continue
        cleaned.append(" " if category == "Zs" else ch)
    name = re.sub(r" {2,}", " ", "".join(cleaned)).strip()
    name = name.lstrip(". ").rstrip()
    if not name:
        return "upload"
    if len(name) > MAX_DISPLAY_NAME:
        stem, ext = os.path.splitext(name)
        if not ext or len(ext) > _MAX_EXT_LEN:
            stem, ext = name, ""
        name = stem[: MAX_DISPLAY_NAME - len(ext)].rstrip() + ext
    return name


def ingest_upload(
    source: str | os.PathLike | bytes,
    *,
    store_dir: Path,
    limits: UploadLimits,
    original_name: str | None = None,
) -> Attachment:
    """Validate an uploaded file and store a copy in `store_dir`.

    `source` is a path (`str` or path-like) or the file's bytes. `original_name` is the name
    the user gave the file (shown in messages); by default the path's last component, or
    "upload" for bytes. Raises `InvalidUpload` for anything that is not an acceptable image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        display = safe_display_name(original_name)
        size = len(source)
        _check_size(size, display, limits)
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        display = safe_display_name(original_name if original_name is not None else path)
        data = _read_limited(path, display, limits)
    else:
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    return _ingest_bytes(data, display, Path(store_dir), limits)


def ingest_image(
    image: Image.Image,
    *,
    store_dir: Path,
    limits: UploadLimits,
    name: str = "image.png",
) -> Attachment:
    """Validate an in-memory PIL image (e.g. an example), save it as PNG and store it like an
    upload. EXIF orientation is applied first; only the current frame is saved. The same
    limits apply (pixel count before encoding, byte size of the PNG, `"PNG"` in formats)."""
    display = safe_display_name(name)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, not {type(image).__name__}")
    width, height = image.size
    _check_pixels(width, height, display, limits)
    try:
        img = ImageOps.exif_transpose(image)
        if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InvalidUpload(
            f"{display}: the image cannot be encoded as PNG ({err}); "
            f"accepted: {_accepted(limits)} images."
        ) from None
    data = buf.getvalue()
    _check_size(len(data), display, limits)
    return _ingest_bytes(data, display, Path(store_dir), limits)


def load_attachment(
    store_dir: Path,
    sha256: str,
    *,
    display_name: str | None = None,
    limits: UploadLimits | None = None,
) -> Attachment:
    """Re-open an attachment stored earlier in `store_dir` by its SHA-256 (chat import).

    The stored file is validated again (same checks as an upload, default limits unless given)
    and its hash verified. Raises `InvalidUpload` if the hash is malformed or not stored.
    """
    limits = limits or UploadLimits()
    sha = str(sha256).strip().lower()
    display = safe_display_name(display_name) if display_name else f"attachment {sha[:12]}"
    if not _SHA256_RE.match(sha):
        raise InvalidUpload(
            f"{display}: {str(sha256)[:80]!r} is not an attachment id; "
            "expected a SHA-256 hex digest (64 characters 0-9, a-f)."
        )
    store_dir = Path(store_dir).expanduser().absolute()
    candidates = [store_dir / f"{sha}{ext}" for ext in dict.fromkeys(_EXTENSIONS.values())]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise InvalidUpload(
            f"{display}: attachment {sha} is not in the upload store {str(store_dir)!r} "
            "(it may have been deleted); upload the image again."
        )
    data = _read_limited(str(found[0]), display, limits)
    if hashlib.sha256(data).hexdigest() != sha:
        raise InvalidUpload(
            f"{display}: the stored copy of attachment {sha[:12]} is damaged "
            "(its content no longer matches its hash); upload the image again."
        )
    return _ingest_bytes(data, display, store_dir, limits)


# --------------------------------------------------------------------------------------------
# checks


def _accepted(limits: UploadLimits) -> str:
    return ", ".join(f.upper() for f in limits.formats)


def _human_pixels(n: int) -> str:
    if n < 1_000_000:
        return f"{n:,} pixels"
    return f"{n / 1_000_000:.1f}".removesuffix(".0") + " megapixels"


def _pixels_vs_limit(n: int, limit: int) -> tuple[str, str]:
    """`n` and `limit` for a message; exact counts when rounding would make them look equal
    (6325 x 6325 is 40,005,625 pixels, over a 40,000,000 limit, though both round to 40 MP)."""
    shown, limit_shown = _human_pixels(n), _human_pixels(limit)
    if shown == limit_shown:
        return f"{n:,} pixels", f"{limit:,} pixels"
    return shown, limit_shown


def _ratio(value: float, other: float | None = None) -> str:
    """`value` as "20" / "2.5" / "16,000", with enough decimals to differ from `other`."""
    for decimals in (1, 2, 3, 4):
        shown = f"{value:,.{decimals}f}".rstrip("0").rstrip(".")
        if other is None or shown != f"{other:,.{decimals}f}".rstrip("0").rstrip("."):
            return shown
    return f"{value:,}"


def _check_size(size: int, display: str, limits: UploadLimits) -> None:
    if size == 0:
        raise InvalidUpload(
            f"{display}: file is empty (0 bytes); accepted: {_accepted(limits)} images "
            f"up to {_human_bytes(limits.max_bytes)}."
        )
    if size > limits.max_bytes:
        shown, limit = _human_bytes(size), _human_bytes(limits.max_bytes)
        if shown == limit:  # rounding would hide the difference
            shown, limit = f"{size:,} bytes", f"{limits.max_bytes:,} bytes"
        raise InvalidUpload(f"{display}: file is {shown}; the limit is {limit}.")


def _check_pixels(width: int, height: int, display: str, limits: UploadLimits) -> None:
    pixels = max(width, 0) * max(height, 0)
    if width <= 0 or height <= 0:
        raise InvalidUpload(
            f"{display}: image declares an empty size ({width} x {height} pixels); "
            f"accepted: {_accepted(limits)} images with at least 1 x 1 pixels."
        )
    if pixels > limits.max_pixels:
        shown, limit = _pixels_vs_limit(pixels, limits.max_pixels)
        raise InvalidUpload(
            f"{display}: image is {width} x {height} pixels ({shown}); the limit is {limit}."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise InvalidUpload(
            f"{display}: image is {width} x {height} pixels, an aspect ratio of "
            f"{_ratio(ratio, limits.max_aspect_ratio)}:1; the limit is "
            f"{_ratio(limits.max_aspect_ratio)}:1 (image encoders scale the short side to their "
            "input size, so a thin strip would become millions of pixels); crop it and upload "
            "it again."
        )


def _check_pil_bomb_limit(size: tuple[int, int], display: str) -> None:
    """Pillow's own guard, applied explicitly (independent of the global warnings state)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        shown, limit_shown = _pixels_vs_limit(size[0] * size[1], int(limit))
        raise InvalidUpload(
            f"{display}: image is {size[0]} x {size[1]} pixels ({shown}); "
            f"the limit is {limit_shown}."
        )


def _read_limited(path: str, display: str, limits: UploadLimits) -> bytes:
    return read_limited(
        path, display, limits.max_bytes, lambda size: _check_size(size, display, limits),
        f"{_accepted(limits)} image files",
    )


# --------------------------------------------------------------------------------------------
# decoding


@contextmanager
def _bombs_are_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _pil_formats(formats: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The accepted formats Pillow knows, upper-cased (unknown names are skipped)."""
    Image.init()
    return tuple(f for f in dict.fromkeys(x.upper() for x in formats) if f in Image.OPEN)


def _bomb_error(err: Exception, display: str, max_pixels: int | None) -> InvalidUpload:
    """Pillow's decompression-bomb refusal, in the same words as our own pixel check."""
    limits = [n for n in (max_pixels, Image.MAX_IMAGE_PIXELS) if n is not None]
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = _human_pixels(int(found.group(1))) if found else "too many pixels"
    limit = ""
    if limits:
        limit = _human_pixels(int(min(limits)))
        if found:
            size, limit = _pixels_vs_limit(int(found.group(1)), int(min(limits)))
        limit = f"; the limit is {limit}"
    return InvalidUpload(f"{display}: image is {size}{limit} (refused as a decompression bomb).")


# Pillow's refusals of compressed PNG metadata (zTXt/iTXt text, iCCP colour profile) that
# inflates past PngImagePlugin.MAX_TEXT_CHUNK / MAX_TEXT_MEMORY: a metadata decompression bomb.
_METADATA_BOMB_MESSAGES = ("Decompressed data too large", "Too much memory used in text chunks")
_PNG_COMPRESSED_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")


def _png_compressed_chunks(data: bytes) -> list[str]:
    """The compressed metadata chunk types a PNG holds, in order of first appearance."""
    found: list[str] = []
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind in _PNG_COMPRESSED_CHUNKS and kind.decode() not in found:
            found.append(kind.decode())
        if kind == b"IEND":
            break
        pos += 12 + length
    return found


def _metadata_bomb(err: BaseException, display: str, data: bytes | None) -> InvalidUpload | None:
    """The message for Pillow's refusal of oversized compressed metadata, else None."""
    if not isinstance(err, ValueError) or not str(err).startswith(_METADATA_BOMB_MESSAGES):
        return None
    from PIL import PngImagePlugin

    chunks = _png_compressed_chunks(data) if data and data.startswith(b"\x89PNG") else []
    what = {"zTXt": "zTXt text", "iTXt": "iTXt text", "iCCP": "iCCP colour profile"}
    which = ", ".join(what[c] for c in chunks) if chunks else "zTXt/iTXt text or iCCP profile"
    return InvalidUpload(
        f"{display}: the image carries an oversized compressed metadata chunk ({which}) "
        f"that inflates past {_human_bytes(PngImagePlugin.MAX_TEXT_CHUNK)} "
        "(refused as a decompression bomb); re-export the image without that metadata and "
        "upload it again."
    )


def _open_header(
    data: bytes, display: str, formats: tuple[str, ...], max_pixels: int | None = None
) -> Image.ImageFile.ImageFile:
    """Parse the header only (no pixel data), within `_bombs_are_errors()`."""
    try:
        return Image.open(io.BytesIO(data), formats=_pil_formats(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _bomb_error(err, display, max_pixels) from None
    except ValueError as err:
        if bomb := _metadata_bomb(err, display, data):
            raise bomb from None
        raise


def _decode(img: Image.Image, display: str, data: bytes | None = None) -> None:
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _bomb_error(err, display, None) from None
    except MemoryError:
        raise InvalidUpload(f"{display}: image is too large to decode.") from None
    except Exception as err:  # OSError (truncated), SyntaxError, ValueError, zlib.error, ...
        if bomb := _metadata_bomb(err, display, data):
            raise bomb from None
        fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "image")
        raise InvalidUpload(
            f"{display}: the {fmt} data is corrupt or truncated ({err}); "
            "re-save or re-export the image and upload the complete file."
        ) from None


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block does not make the image unusable
        orientation = None
    w, h = img.size
    return (h, w) if orientation in _TRANSPOSING_ORIENTATIONS else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit greyscale: scale into 8 bits instead of clipping to white.
        img = img.convert("F")
        lo, hi = img.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = img.point(lambda v: v * scale - lo * scale).convert("L")  # type: ignore[operator]
    return img.convert("RGB")


def _ingest_bytes(data: bytes, display: str, store_dir: Path, limits: UploadLimits) -> Attachment:
    accepted = _pil_formats(limits.formats)
    with _bombs_are_errors():
        try:
            img = _open_header(data, display, accepted, limits.max_pixels)
        except InvalidUpload:
            raise
        except Exception:  # UnidentifiedImageError, or a parser choking on a broken header
            img = None
        if img is None:
            raise _not_an_image(data, display, limits)
        fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "")
        if fmt not in {_FORMAT_ALIASES.get(f, f) for f in accepted}:
            raise InvalidUpload(
                f"{display}: image format {fmt or 'unknown'} is not accepted; "
                f"accepted: {_accepted(limits)}"
            )
        width, height = img.size
        _check_pixels(width, height, display, limits)
        _check_pil_bomb_limit(img.size, display)
        _decode(img, display, data)
        width, height = _displayed_size(img)
    sha = hashlib.sha256(data).hexdigest()
    path = _store(data, sha, _EXTENSIONS.get(fmt, f".{fmt.lower()}"), store_dir, display)
    return Attachment(
        sha256=sha,
        path=path,
        display_name=display,
        format=fmt,
        width=width,
        height=height,
        size_bytes=len(data),
    )


def _not_an_image(data: bytes, display: str, limits: UploadLimits) -> InvalidUpload:
    accepted = _accepted(limits)
    sniffed = _sniff(data)
    if sniffed is None:
        return InvalidUpload(f"{display}: not a recognised image; accepted: {accepted}")
    kind, label = sniffed
    if kind == "other":
        return InvalidUpload(f"{display}: not an image (detected {label}); accepted: {accepted}")
    if label.upper() in {f.upper() for f in limits.formats}:
        return InvalidUpload(
            f"{display}: the {label} data is corrupt or truncated (its header cannot be read); "
            f"re-save the image and upload the complete file; accepted: {accepted}"
        )
    return InvalidUpload(f"{display}: image format {label} is not accepted; accepted: {accepted}")
