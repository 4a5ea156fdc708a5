"""One uploaded file -> validated LlamaIndex `Document`s (text kinds) or a validated image.

What this module does:

* decides what a file is by its *content* first (`%PDF-`, a ZIP holding `word/document.xml`,
  PNG/JPEG/WebP magic bytes) and only then, for text, by its extension (`.md`, `.html`, else
  plain text); a file whose extension claims a binary kind its content does not match (a
  `.pdf` without `%PDF-`, a `.png` that is text) is refused;
* enforces `KnowledgeLimits` before the expensive work: the byte size from `os.stat` (or
  `len`) before the file is read, the PDF page count before text is extracted, a DOCX's
  uncompressed size, compression ratio, entry count and XML size from the ZIP central
  directory before anything is inflated, Markdown's section count and HTML's nesting depth
  from cheap linear scans before the parsers run, the extracted character count, and a
  wall-clock `Deadline` checked between steps; images go through
  `mmchat.attachments.ingest_upload` (pixel and aspect-ratio limits, truncated data,
  decompression and metadata bombs);
* parses with LlamaIndex's file readers (`PDFReader`, `DocxReader`, `MarkdownReader`,
  `FlatReader`); text is decoded here first because those readers assume UTF-8: UTF-8 with
  or without BOM, UTF-16 with BOM, else GB18030 or Windows-1252/Latin-1 but only when the
  decoded text is plausible (mostly common GB2312 characters; accented letters inside
  mostly-ASCII words), so Shift-JIS or random bytes are refused instead of indexed as noise.
  HTML is parsed with BeautifulSoup and its `<body>` text taken the way `HTMLTagReader`
  takes it, minus scripts, styles and comments, in one linear walk (bs4's serialize-and-
  reparse round trip is quadratic and recursive);
* returns a `LoadedFile`: one `Document` per PDF page that has text (metadata `page` is the
  real 1-based page number), one per Markdown section (`section` = its header), one for a
  DOCX, HTML or text file; every `Document` carries `file_name` (the display name) and a
  deterministic id (`<sha256>-<n>`), so the same bytes always give the same ids;
* stores the original bytes as `store_dir/<sha256><ext>` (temporary file + `os.replace`,
  inside `store_dir` only) after validation has passed, so a refused file leaves nothing.

Every refusal is an `mmchat.errors.InvalidUpload` whose message starts with the file's safe
display name, names the problem and says what is accepted; an unexpected failure inside a
reader is reported the same way, never as a traceback.

What it does not do: no chunking, embedding, vector store or OCR (scanned PDFs are refused),
no legacy `.doc`, no password handling, and it imports no torch. The readers are imported
lazily (they pull in pandas). Parsing happens on a private copy in a fresh folder under the
caller's `work_dir` (default `store_dir/.work`, never the system temp folder), removed
afterwards; `purge_work_dir` removes what a killed process left there. A single parser call is
not interrupted: the structure limits bound what each call is given.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmchat.attachments import ingest_upload, safe_display_name
from mmchat.config import UploadLimits
from mmchat.errors import ConfigError, InvalidUpload
from mmchat.files import human_bytes as _human_bytes
from mmchat.files import read_limited
from mmchat.files import sniff as _sniff
from mmchat.files import store_atomic as _store

__all__ = [
    "ACCEPTED",
    "Deadline",
    "ENCODINGS",
    "KnowledgeLimits",
    "LoadedFile",
    "SUPPORTED_KINDS",
    "load_file",
    "sniff_kind",
]

SUPPORTED_KINDS = ("pdf", "docx", "markdown", "html", "text", "image")
ACCEPTED = (
    "PDF, Word (.docx), Markdown, HTML, plain text (UTF-8/UTF-16/GB18030/Windows-1252), "
    "and PNG/JPEG/WebP images"
)
ENCODINGS = (
    "UTF-8, UTF-16 (with BOM), GB18030 (Simplified Chinese) and Windows-1252/Latin-1 "
    "(Western European)"
)

MAX_ZIP_ENTRIES = 10_000
_HEAD_BYTES = 8192  # what content sniffing looks at
WORK_DIR_NAME = ".work"  # default folder for reading copies, inside store_dir
_BIG_ENTRY = 1024 * 1024  # DOCX entries at least this big also get a per-entry ratio check
_INFLATE_STEP = 64 * 1024  # DOCX parts are inflated at most this much at a time when checked
_MAX_CONTROL_RATIO = 0.01  # text with more control characters than this is binary garbage
# A UTF-8 decode error after this many valid non-ASCII characters means broken UTF-8, not
# GB18030 (whose byte pairs almost never form long runs of valid UTF-8).
_UTF8_EVIDENCE = 16

_KIND_LABEL = {
    "pdf": "PDF",
    "docx": "Word (.docx)",
    "markdown": "Markdown",
    "html": "HTML",
    "text": "text",
    "image": "image",
}
_STORED_EXT = {"pdf": ".pdf", "docx": ".docx", "markdown": ".md", "html": ".html", "text": ".txt"}
_MARKDOWN_EXTS = {".md", ".markdown", ".mdown", ".mkd"}
_HTML_EXTS = {".html", ".htm", ".xhtml"}
_PLAIN_TEXT_EXTS = {".txt", ".text"}
# Extensions that claim a binary format: text content under these names is refused.
_IMAGE_EXTS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".webp": "WebP",
    ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".heic": "HEIC",
    ".avif": "AVIF",
}
_BINARY_EXTS = {".pdf", ".docx", ".doc", ".docm", ".zip", ".exe", ".dll"} | set(_IMAGE_EXTS)

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

# HTML elements whose content is never document text. (Not <head>: html.parser leaves an
# unclosed <head> wrapped around the <body>; only <body> is read anyway.)
_HTML_DROP = (
    "script", "style", "noscript", "template", "iframe", "object", "embed", "svg",
    "canvas", "title", "meta", "link", "button", "select", "option",
)
# Elements that end a line; without a separator BeautifulSoup glues "<li>a</li><li>b</li>"
# into "ab" (HTMLTagReader joins nested text with get_text()).
_HTML_BLOCKS = (
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul", "caption",
)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class KnowledgeLimits:
    """What one knowledge-base upload may be."""

    max_file_bytes: int = 50 * 1024 * 1024
    max_pages: int = 1000  # PDF pages
    max_chars: int = 2_000_000  # extracted text, all kinds
    max_unzipped_bytes: int = 200 * 1024 * 1024  # DOCX (a zip): total uncompressed size
    max_zip_ratio: float = 100.0  # DOCX: uncompressed/compressed ratio (zip bombs)
    max_pixels: int = 40_000_000  # images
    max_aspect_ratio: float = 20.0  # images: longest side / shortest side
    max_parse_seconds: float = 60.0  # reading one file (checked between steps)
    max_html_depth: int = 2000  # HTML element nesting (unclosed <p>/<li> nest in html.parser)
    max_sections: int = 5000  # Markdown headers
    max_docx_xml_bytes: int = 32 * 1024 * 1024  # DOCX: word/*.xml, as the ZIP declares them
    max_chunks: int = 10_000  # chunks per document (enforced by the knowledge base's splitter)

    @classmethod
    def from_config(cls, config: Any) -> "KnowledgeLimits":
        """The limits a `KnowledgeConfig` sets (the others keep their defaults)."""
        return cls(
            max_file_bytes=config.max_file_mb * 1024 * 1024,
            max_parse_seconds=float(config.max_parse_seconds),
            max_html_depth=config.max_html_depth,
            max_sections=config.max_sections,
            max_docx_xml_bytes=config.max_docx_xml_mb * 1024 * 1024,
            max_chunks=config.max_chunks,
        )

    def __post_init__(self) -> None:
        for name in (
            "max_file_bytes", "max_pages", "max_chars", "max_unzipped_bytes",
            "max_zip_ratio", "max_pixels", "max_parse_seconds", "max_html_depth",
            "max_sections", "max_docx_xml_bytes", "max_chunks",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"knowledge limit {name} must be positive, got {getattr(self, name)}"
                )
        if not self.max_aspect_ratio >= 1:
            raise ConfigError(
                f"knowledge limit max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}"
            )


class Deadline:
    """A wall-clock budget for reading one upload; `check` refuses once it is spent.

    Checked between steps (decode, parse, tidy, each document split): a single parser call is
    not interrupted, which is why the structure limits bound what each call is given.
    """

    def __init__(self, seconds: float, display: str) -> None:
        self.seconds = seconds
        self.display = display
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self, step: str) -> None:
        if self.elapsed() > self.seconds:
            raise InvalidUpload(
                f"{self.display}: reading it took longer than the {self.seconds:g} s allowed "
                f"(stopped while {step}, after {self.elapsed():.1f} s); split it into smaller "
                "files or simplify its structure."
            )


@dataclass(frozen=True)
class LoadedFile:
    """A validated upload and what was read from it.

    `documents` holds `llama_index.core.Document`s (empty for images); each one's metadata has
    `file_name` (the display name), `page` (1-based, PDF only) and, for Markdown sections
    under a header, `section`.
    """

    sha256: str
    display_name: str
    kind: str
    size_bytes: int
    path: Path
    documents: list
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    @property
    def text_chars(self) -> int:
        """Characters of text across all documents (0 for images)."""
        return sum(len(doc.text) for doc in self.documents)


# --------------------------------------------------------------------------------------------
# public functions


def sniff_kind(data_head: bytes, name: str) -> str | None:
    """The kind of a file from its first bytes (content first) and, for text, its name.

    `%PDF-` -> "pdf"; a ZIP named `.docx` or naming `word/` in its first entries -> "docx";
    PNG/JPEG/WebP magic -> "image"; otherwise decodable text -> "markdown" (`.md`,
    `.markdown`), "html" (`.html`, `.htm`, or an HTML document under another non-`.txt`
    name) or "text". None when unsupported, including text named like a binary format.
    A "docx" answer is provisional: `load_file` still checks the ZIP's central directory.
    """
    return _classify(bytes(data_head[:_HEAD_BYTES]), _extension(name))


def load_file(
    source: str | os.PathLike | bytes,
    *,
    store_dir: Path,
    limits: KnowledgeLimits = KnowledgeLimits(),
    original_name: str | None = None,
    work_dir: Path | None = None,
    deadline: Deadline | None = None,
) -> LoadedFile:
    """Validate one uploaded file, read it and store a copy in `store_dir`.

    `source` is a path (`str` or path-like) or the file's bytes; `original_name` is the name
    the user gave it (for messages and the text-kind extension; by default the path's last
    component, or "upload" for bytes). Raises `InvalidUpload` for anything refused.

    The readers get a private copy in a fresh folder under `work_dir` (default
    `store_dir/.work`; never the system temp folder), removed afterwards; a process killed
    mid-parse leaves it there for `purge_work_dir` at the next start. `deadline` (default: a
    new one of `limits.max_parse_seconds`) is checked between steps.
    """
    data, display = _read_source(source, original_name, limits)
    deadline = deadline or Deadline(limits.max_parse_seconds, display)
    ext = _extension(display)
    kind = _classify(data[:_HEAD_BYTES], ext)
    if kind is None:
        raise _unsupported(data, display, ext)
    if kind == "image":
        return _load_image(data, display, Path(store_dir), limits)

    sha = hashlib.sha256(data).hexdigest()
    work_root = Path(work_dir) if work_dir is not None else Path(store_dir) / WORK_DIR_NAME
    work = _make_work_dir(work_root, display)
    try:
        if kind == "pdf":
            parts, pages = _read_pdf(data, work, display, limits)
        elif kind == "docx":
            parts, pages = _read_docx(data, work, display, limits), None
        else:
            parts, pages = _read_text_kind(kind, data, work, display, limits, deadline), None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _remove_if_empty(work_root)
    deadline.check("parsing")

    parts = [(_tidy(text), meta) for text, meta in parts]
    parts = [(text, meta) for text, meta in parts if text]
    if not parts:
        raise InvalidUpload(
            f"{display}: the {_KIND_LABEL[kind]} file contains no text; accepted: {ACCEPTED}."
        )
    _check_chars(sum(len(text) for text, _ in parts), display, limits)
    deadline.check("cleaning up the text")

    from llama_index.core import Document

    documents = [
        Document(id_=f"{sha}-{i}", text=text, metadata={"file_name": display, **meta})
        for i, (text, meta) in enumerate(parts)
    ]
    path = _store(data, sha, _STORED_EXT[kind], Path(store_dir), display)
    return LoadedFile(
        sha256=sha,
        display_name=display,
        kind=kind,
        size_bytes=len(data),
        path=path,
        documents=documents,
        pages=pages,
    )


def _make_work_dir(work_root: Path, display: str) -> Path:
    """A fresh folder for one file's reading copies, inside `work_root` (created as needed;
    retried, since a concurrent load removes `work_root` when it leaves it empty)."""
    for attempt in range(3):
        try:
            work_root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix="reading-", dir=work_root))
        except FileNotFoundError:
            if attempt < 2:
                continue
            err: OSError = FileNotFoundError(f"{work_root} vanished")
        except OSError as error:
            err = error
        raise InvalidUpload(
            f"{display}: the server cannot make a working copy ({err.strerror or err}); "
            "try again later."
        ) from None
    raise AssertionError("unreachable")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (another load is using it), or already gone
        pass


def purge_work_dir(work_dir: Path, older_than: float | None = None) -> int:
    """Remove reading copies left in `work_dir` by a killed process (all of them, or those last
    modified before the `older_than` timestamp); returns how many were removed."""
    removed = 0
    try:
        entries = list(Path(work_dir).iterdir())
    except OSError:
        return 0
    for entry in entries:
        try:
            if older_than is not None and entry.stat().st_mtime >= older_than:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    _remove_if_empty(Path(work_dir))
    return removed


# --------------------------------------------------------------------------------------------
# reading and sniffing


def _extension(name: str | None) -> str:
    return os.path.splitext(safe_display_name(name))[1].lower()


def _size_error(size: int, display: str, limit: int) -> InvalidUpload | None:
    if size == 0:
        return InvalidUpload(f"{display}: file is empty (0 bytes); accepted: {ACCEPTED}.")
    if size > limit:
        shown, limit_shown = _human_bytes(size), _human_bytes(limit)
        if shown == limit_shown:  # rounding would hide the difference
            shown, limit_shown = f"{size:,} bytes", f"{limit:,} bytes"
        return InvalidUpload(
            f"{display}: file is {shown}; the limit is {limit_shown}; "
            "split it into smaller files."
        )
    return None


def _read_source(
    source: str | os.PathLike | bytes, original_name: str | None, limits: KnowledgeLimits
) -> tuple[bytes, str]:
    """The file's bytes and display name; the size is checked before anything is read."""
    limit = limits.max_file_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        display = safe_display_name(original_name)
        if err := _size_error(len(source), display, limit):
            raise err
        return bytes(source), display
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    path = os.fspath(source)
    display = safe_display_name(original_name if original_name is not None else path)

    def check_size(size: int) -> None:
        if err := _size_error(size, display, limit):
            raise err

    return read_limited(path, display, limit, check_size, ACCEPTED), display


def _classify(head: bytes, ext: str) -> str | None:
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx" if ext == ".docx" or b"word/" in head else None
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if ext in _BINARY_EXTS or _decode_head(head) is None:
        return None
    if ext in _MARKDOWN_EXTS:
        return "markdown"
    if ext in _HTML_EXTS:
        return "html"
    if ext not in _PLAIN_TEXT_EXTS:
        start = (_decode_head(head) or "").lstrip("\ufeff \t\r\n").lower()
        if start.startswith(("<!doctype html", "<html")):
            return "html"
    return "text"


def _decode_head(head: bytes) -> str | None:
    """The start of a text file (UTF-8/UTF-16 with BOM/GB18030), or None if it is not text.
    A character cut at the end of `head` is tolerated."""
    if not head:
        return None
    if head.startswith(_UTF16_BOMS):
        encodings = ("utf-16",)
    elif b"\x00" in head:
        return None
    else:
        encodings = ("utf-8-sig",) + LEGACY_ENCODINGS
    for encoding in encodings:
        try:
            text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
        except UnicodeDecodeError:
            continue
        if encoding in LEGACY_ENCODINGS and _implausible(text, encoding):
            continue
        return text if _garbage(text) is None else None
    return None


# Legacy (BOM-less, non-UTF) encodings accepted, in the order tried. Both decode almost any
# bytes, so each is accepted only when the text it yields is plausible (`_implausible`):
# GB18030 turns Latin-1 German, Shift-JIS Japanese and random bytes into rare-CJK noise.
LEGACY_ENCODINGS = ("gb18030", "cp1252")
_LEGACY_LABEL = {"gb18030": "GB18030", "cp1252": "Windows-1252/Latin-1"}
_MIN_COMMON_GB = 0.9  # share of non-ASCII characters that must be common (GB2312) Chinese
_MAX_LATIN_NON_ASCII = 0.3  # Western text: at most this share of letters may be non-ASCII
_LATIN_PUNCT = set("€‚„…†‡ˆ‰‹›‘’“”•–—˜™¡¢£¤¥¦§¨©ª«¬®¯°±²³´µ¶·¸¹º»¼½¾¿×÷\xa0\xad")
_common_gb: frozenset[str] | None = None


def _common_gb_chars() -> frozenset[str]:
    """GB2312's punctuation, full-width forms and its 6,763 common Hanzi (rows 1-3, 16-87)."""
    global _common_gb
    if _common_gb is None:
        chars = set()
        for row in list(range(0xA1, 0xA4)) + list(range(0xB0, 0xF8)):
            for cell in range(0xA1, 0xFF):
                try:
                    chars.add(bytes((row, cell)).decode("gb2312"))
                except UnicodeDecodeError:
                    pass
        _common_gb = frozenset(chars)
    return _common_gb


def _implausible(text: str, encoding: str) -> str | None:
    """Why `text` (decoded as the legacy `encoding`) is not plausible text, or None."""
    non_ascii = re.findall(r"[^\x00-\x7f]", text)
    if not non_ascii:
        return None
    if encoding == "gb18030":
        common = _common_gb_chars()
        share = sum(ch in common for ch in non_ascii) / len(non_ascii)
        if share < _MIN_COMMON_GB:
            return f"only {share:.0%} of its non-ASCII characters are common Chinese characters"
        return None
    # Windows-1252/Latin-1: accented letters inside mostly-ASCII words, and typography.
    odd = sum(not (ch.isalpha() or ch in _LATIN_PUNCT) for ch in non_ascii)
    if odd > 0.05 * len(non_ascii):
        return f"{odd:,} of its {len(non_ascii):,} non-ASCII characters are neither letters nor punctuation"
    letters = sum(ch.isalpha() for ch in text)
    accented = sum(ch.isalpha() for ch in non_ascii)
    if accented > _MAX_LATIN_NON_ASCII * max(letters, 1):
        return f"{accented:,} of its {letters:,} letters are non-ASCII"
    runs = sum(len(run) for run in re.findall(r"[^\x00-\x7f]{4,}", text))
    if runs > 0.05 * len(non_ascii):
        return "its non-ASCII characters come in long runs, not inside words"
    return None


def _garbage(text: str) -> str | None:
    """Why decoded text looks like binary data, or None if it looks like text."""
    if "\x00" in text:
        return "it contains NUL characters (binary data)"
    controls = len(_CONTROL_RE.findall(text))
    if controls > _MAX_CONTROL_RATIO * max(len(text), 1):
        return f"it contains {controls:,} control characters (binary data)"
    return None


def _found(data: bytes) -> str:
    """What the data looks like, for messages: "text", "binary data", "a GIF image", ..."""
    if _decode_head(data[:_HEAD_BYTES]) is not None:
        return "text"
    sniffed = _sniff(data)
    if sniffed is None:
        return "binary data"
    what, label = sniffed
    if what == "image":
        return f"a {label} image"
    return "text" if label == "text" else f"{label} data"


def _unsupported(data: bytes, display: str, ext: str) -> InvalidUpload:
    head = data[:_HEAD_BYTES]
    if ext not in _BINARY_EXTS and _sniff(data) is None and (
        b"\x00" not in head or head.startswith(_UTF16_BOMS)
    ):
        _decode_text(data, display)  # text in an unsupported encoding: raises, saying so
    found = _found(data)
    accepted = f"accepted: {ACCEPTED}."
    if ext == ".pdf":
        return InvalidUpload(
            f"{display}: not a PDF file (it has no %PDF- header; found {found}); {accepted}"
        )
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return InvalidUpload(
            f"{display}: this is an old-format .doc or a password-protected Office file; "
            f"save it as .docx without a password and upload it again; {accepted}"
        )
    if ext in (".docx", ".docm"):
        return InvalidUpload(
            f"{display}: not a Word .docx file (not a ZIP archive; found {found}); {accepted}"
        )
    if found.startswith("a ") and found.endswith(" image"):
        return InvalidUpload(f"{display}: {found[2:]}s are not supported; {accepted}")
    if ext in _IMAGE_EXTS:
        return InvalidUpload(
            f"{display}: not a {_IMAGE_EXTS[ext]} image (found {found}); {accepted}"
        )
    if found == "ZIP data":
        found = "a ZIP archive that is not a Word document"
    return InvalidUpload(f"{display}: not a supported file (found {found}); {accepted}")


def _check_chars(chars: int, display: str, limits: KnowledgeLimits) -> None:
    if chars > limits.max_chars:
        raise InvalidUpload(
            f"{display}: has {chars:,} characters of text; the limit is "
            f"{limits.max_chars:,}; split it into smaller files."
        )


def _reader_failed(err: BaseException, display: str, kind: str) -> InvalidUpload:
    # PDFReader retries (tenacity) and raises RetryError; report the underlying error.
    last = getattr(err, "last_attempt", None)
    if last is not None and last.exception() is not None:
        err = last.exception()
    message = " ".join(str(err).split())
    if len(message) > 200:
        message = message[:197] + "..."
    detail = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return InvalidUpload(f"{display}: could not be read as {_KIND_LABEL[kind]} ({detail}).")


def _tidy(text: str) -> str:
    """Drop control characters, trailing spaces and runs of blank lines."""
    if isinstance(text, bytes):  # defensive: some fsspec versions hand readers bytes
        text = text.decode("utf-8", errors="replace")
    text = _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _write(work: Path, name: str, data: bytes | str) -> Path:
    path = work / name
    if isinstance(data, str):
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# PDF


def _read_pdf(
    data: bytes, work: Path, display: str, limits: KnowledgeLimits
) -> tuple[list[tuple[str, dict]], int]:
    import io

    import pypdf
    from pypdf import PasswordType

    try:
        pdf = pypdf.PdfReader(io.BytesIO(data))
        encrypted = pdf.is_encrypted
    except Exception as err:
        raise _damaged_pdf(err, display) from None
    if encrypted:
        try:
            opened = pdf.decrypt("") != PasswordType.NOT_DECRYPTED
        except Exception:  # e.g. AES without the `cryptography` package
            opened = False
        if not opened:
            raise InvalidUpload(
                f"{display}: the PDF is encrypted; remove the password and upload it again."
            )
    try:
        pages = len(pdf.pages)
    except Exception as err:
        raise _damaged_pdf(err, display) from None
    if pages > limits.max_pages:
        raise InvalidUpload(
            f"{display}: the PDF has {pages:,} pages; the limit is {limits.max_pages:,} "
            "pages; split it into smaller files."
        )
    if pages == 0:
        raise InvalidUpload(f"{display}: the PDF has no pages; accepted: {ACCEPTED}.")

    from llama_index.readers.file import PDFReader

    path = _write(work, "document.pdf", data)
    try:
        docs = PDFReader().load_data(path)
    except Exception as err:
        raise _reader_failed(err, display, "pdf") from None
    # One Document per page, in order; `page_label` is the PDF's printed label ("iv", "12"),
    # not the page's position, so the position is what `page` records.
    parts = [(doc.text or "", {"page": number}) for number, doc in enumerate(docs, start=1)]
    parts = [(text, meta) for text, meta in parts if text.strip()]
    if not parts:
        raise InvalidUpload(
            f"{display}: the PDF has no text layer (scanned?); OCR is not supported; "
            "upload a PDF with selectable text, or the document as Word, Markdown or text."
        )
    return parts, pages


def _damaged_pdf(err: Exception, display: str) -> InvalidUpload:
    message = " ".join(str(err).split())[:200]
    return InvalidUpload(
        f"{display}: the PDF is damaged or incomplete and cannot be read "
        f"({type(err).__name__}: {message}); re-export it and upload the complete file."
    )


# --------------------------------------------------------------------------------------------
# DOCX


def _read_docx(
    data: bytes, work: Path, display: str, limits: KnowledgeLimits
) -> list[tuple[str, dict]]:
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except Exception as err:
        message = " ".join(str(err).split())[:200]
        raise InvalidUpload(
            f"{display}: not a valid Word .docx file (the ZIP container is damaged or "
            f"incomplete: {message}); accepted: {ACCEPTED}."
        ) from None
    _check_zip(infos, display, limits)
    names = {info.filename for info in infos}
    if "word/document.xml" not in names:
        raise InvalidUpload(
            f"{display}: a ZIP archive without word/document.xml, not a Word document; "
            f"accepted: {ACCEPTED}."
        )
    if any(info.flag_bits & 0x1 for info in infos):
        raise InvalidUpload(
            f"{display}: the document is encrypted; remove the password and upload it again."
        )
    _check_inflated_sizes(data, infos, display)

    from llama_index.readers.file import DocxReader

    path = _write(work, "document.docx", data)
    try:
        docs = DocxReader().load_data(path)
    except Exception as err:
        raise _reader_failed(err, display, "docx") from None
    return [(doc.text or "", {}) for doc in docs]


def _check_zip(infos: list[zipfile.ZipInfo], display: str, limits: KnowledgeLimits) -> None:
    """Refuse zip bombs from the sizes the central directory declares (nothing is inflated
    here); `_check_inflated_sizes` then makes sure the declared sizes are true."""
    bomb = "refused as a possible zip bomb"
    if len(infos) > MAX_ZIP_ENTRIES:
        raise InvalidUpload(
            f"{display}: the .docx holds {len(infos):,} files; the limit is "
            f"{MAX_ZIP_ENTRIES:,} ({bomb})."
        )
    total = sum(info.file_size for info in infos)
    packed = sum(info.compress_size for info in infos)
    if total > limits.max_unzipped_bytes:
        raise InvalidUpload(
            f"{display}: the .docx unpacks to {_human_bytes(total)}; the limit is "
            f"{_human_bytes(limits.max_unzipped_bytes)} ({bomb})."
        )
    xml = [info for info in infos if info.filename.startswith("word/")
           and info.filename.lower().endswith(".xml")]
    xml_total = sum(info.file_size for info in xml)
    if xml_total > limits.max_docx_xml_bytes:
        biggest = max(xml, key=lambda info: info.file_size)
        raise InvalidUpload(
            f"{display}: the document's XML unpacks to {_human_bytes(xml_total)} "
            f"({biggest.filename}: {_human_bytes(biggest.file_size)}); the limit is "
            f"{_human_bytes(limits.max_docx_xml_bytes)} (parsing it would take tens of seconds and "
            "gigabytes of memory); split the document into smaller files."
        )
    worst = [(total, packed)] + [
        (info.file_size, info.compress_size) for info in infos if info.file_size >= _BIG_ENTRY
    ]
    for size, compressed in worst:
        ratio = size / max(compressed, 1)
        if ratio > limits.max_zip_ratio:
            raise InvalidUpload(
                f"{display}: the .docx is compressed {ratio:,.0f}:1; the limit is "
                f"{limits.max_zip_ratio:,.0f}:1 ({bomb})."
            )


def _check_inflated_sizes(data: bytes, infos: list[zipfile.ZipInfo], display: str) -> None:
    """Inflate every XML part in bounded steps and refuse one larger than it claims.

    zipfile cuts an entry off at its declared size, but `ZipFile.read` (what docx2txt calls)
    inflates all of the entry's compressed data in one step first: an entry that declares 1 KB
    and inflates to gigabytes would be allocated in full. Only the XML parts are checked
    (docx2txt reads nothing else); media are never inflated here or by the reader.
    """
    damaged = (
        f"{display}: not a valid Word .docx file (the ZIP container is damaged: "
        "{what}); re-save the document and upload it again."
    )
    view = memoryview(data)
    for info in infos:
        if not info.filename.lower().endswith((".xml", ".rels")):
            continue
        if info.compress_type == zipfile.ZIP_STORED:
            continue  # read as is: never more than its stored bytes
        if info.compress_type != zipfile.ZIP_DEFLATED:
            raise InvalidUpload(
                damaged.format(what=f"{info.filename} uses an unsupported compression method")
            )
        start = info.header_offset
        if bytes(view[start : start + 4]) != b"PK\x03\x04" or start + 30 > len(data):
            raise InvalidUpload(damaged.format(what=f"no local header for {info.filename}"))
        name_len, extra_len = struct.unpack_from("<HH", data, start + 26)
        start += 30 + name_len + extra_len
        raw = view[start : start + info.compress_size]
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        produced = 0
        try:
            for offset in range(0, len(raw), _INFLATE_STEP):
                pending = bytes(raw[offset : offset + _INFLATE_STEP])
                while pending and not inflater.eof:
                    produced += len(inflater.decompress(pending, _INFLATE_STEP))
                    if produced > info.file_size:
                        raise InvalidUpload(
                            f"{display}: {info.filename} inflates to more than the "
                            f"{_human_bytes(info.file_size)} its ZIP directory declares "
                            "(refused as a possible zip bomb)."
                        )
                    pending = inflater.unconsumed_tail
                if inflater.eof:
                    break
        except zlib.error as err:
            raise InvalidUpload(damaged.format(what=f"{info.filename}: {err}")) from None


# --------------------------------------------------------------------------------------------
# Markdown, HTML, plain text


def _decode_text(data: bytes, display: str) -> str:
    """UTF-8 (BOM optional), UTF-16 (BOM required), or a legacy encoding (GB18030,
    Windows-1252) whose result is plausible text; refuses anything else, naming why."""
    advice = f"save it as UTF-8 and upload it again; accepted encodings: {ENCODINGS}."
    if data.startswith(codecs.BOM_UTF8):
        attempts = [("utf-8", data[len(codecs.BOM_UTF8) :])]
    elif data.startswith(_UTF16_BOMS):
        attempts = [("utf-16", data)]
    else:
        attempts = [("utf-8", data)] + [(encoding, data) for encoding in LEGACY_ENCODINGS]
    text = None
    why: list[str] = []
    for encoding, payload in attempts:
        try:
            candidate = payload.decode(encoding)
        except UnicodeDecodeError as err:
            if encoding == "utf-8" and len(attempts) > 1:
                seen = payload[: err.start].decode("utf-8")
                if sum(ord(ch) > 127 for ch in seen) >= _UTF8_EVIDENCE:
                    raise InvalidUpload(
                        f"{display}: the text is UTF-8 but has invalid bytes at offset "
                        f"{err.start:,}; {advice}"
                    ) from None
            label = _LEGACY_LABEL.get(encoding, encoding.upper())
            why.append(f"not {label} (undecodable bytes at offset {err.start:,})")
            continue
        reason = _implausible(candidate, encoding) if encoding in LEGACY_ENCODINGS else None
        if reason:
            sample = "".join(ch for ch in candidate[:200] if ord(ch) > 127)[:12]
            why.append(f"read as {_LEGACY_LABEL[encoding]} it is not plausible text ({reason}, "
                       f"e.g. {sample!r})")
            continue
        text = candidate
        break
    if text is None:
        raise InvalidUpload(
            f"{display}: the text's encoding is not recognised: {'; '.join(why)}; {advice}"
        )
    if reason := _garbage(text):
        raise InvalidUpload(f"{display}: not a text file ({reason}); accepted: {ACCEPTED}.")
    return text


def _read_text_kind(
    kind: str, data: bytes, work: Path, display: str, limits: KnowledgeLimits,
    deadline: Deadline | None = None,
) -> list[tuple[str, dict]]:
    deadline = deadline or Deadline(limits.max_parse_seconds, display)
    text = _decode_text(data, display)
    _check_chars(len(text), display, limits)  # early: no parsing of oversized text
    if not text.strip():
        raise InvalidUpload(
            f"{display}: the {_KIND_LABEL[kind]} file contains no text; accepted: {ACCEPTED}."
        )
    deadline.check("decoding the text")
    try:
        if kind == "markdown":
            _check_markdown_structure(text, display, limits)
            return _markdown_parts(text, work)
        if kind == "html":
            return _html_parts(text, work, display, limits, deadline)
        from llama_index.readers.file import FlatReader

        docs = FlatReader().load_data(_write(work, "document.txt", text))
        return [(doc.text or "", {}) for doc in docs]
    except InvalidUpload:
        raise
    except RecursionError:
        raise InvalidUpload(
            f"{display}: the {_KIND_LABEL[kind]} structure is nested too deeply to read; "
            "simplify it or upload it as plain text."
        ) from None
    except Exception as err:
        raise _reader_failed(err, display, kind) from None


_MD_HEADER_RE = re.compile(r"^(#+)\s+(.*)")


def _check_markdown_structure(text: str, display: str, limits: KnowledgeLimits) -> None:
    """Refuse Markdown whose sections would explode before MarkdownReader builds them.

    Counts headers the way `MarkdownReader.markdown_to_tups` finds them (a stripped line
    starting with `#`s and a space, outside ``` blocks), and the header text its sections
    repeat: each section's header is the path of all open headers, so thousands of nested
    levels would copy the same text into every section.
    """
    sections = 0
    repeated = 0
    open_headers: dict[int, int] = {}  # level -> header length
    in_code = False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        match = _MD_HEADER_RE.match(line.strip())
        if not match:
            continue
        sections += 1
        if sections > limits.max_sections:
            raise InvalidUpload(
                f"{display}: the Markdown has more than {limits.max_sections:,} sections "
                f"(headers); the limit is {limits.max_sections:,} per file; split it into "
                "smaller files."
            )
        level = len(match.group(1))
        open_headers = {k: v for k, v in open_headers.items() if k < level}
        open_headers[level] = len(match.group(2))
        repeated += sum(open_headers.values())
        if repeated > limits.max_chars:
            raise InvalidUpload(
                f"{display}: the Markdown's nested headers would repeat more than "
                f"{limits.max_chars:,} characters of header text across its sections "
                f"(the limit for a file's text); flatten its header levels or split it."
            )


def _markdown_parts(text: str, work: Path) -> list[tuple[str, dict]]:
    from llama_index.readers.file import MarkdownReader

    # remove_images=False: the reader's image pattern is a broken regex that does not match
    # `![alt](src)` but deletes "!." / "!?" / "!)" from prose. Links keep their text.
    reader = MarkdownReader(remove_images=False)
    parts = []
    # parse_tups is what load_data uses; it keeps the header separate, for `section`.
    for header, body in reader.parse_tups(str(_write(work, "document.md", text))):
        if header:
            parts.append((f"{header}\n{body}", {"section": header}))
        else:
            parts.append((body, {}))
    return parts


# HTML elements without content (never pushed on the open-element stack), and a cheap scan of
# tags for `_html_depth_estimate`.
_HTML_VOID = frozenset((
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr", "keygen", "command", "basefont", "frame", "isindex", "spacer",
))
_HTML_TAG_RE = re.compile(r"<(/?)([A-Za-z][^\s/>]*)[^>]*?(/?)>")
_HTML_SKIP_RE = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>", re.S | re.I)


def _html_depth_estimate(text: str, limit: int) -> int:
    """How deep html.parser (as BeautifulSoup drives it) will nest the elements: a start tag
    opens one (unless void or `<x/>`), an end tag closes up to the latest open one of its
    name and is ignored when none is open. Linear; stops as soon as `limit` is passed."""
    stack: list[str] = []
    deepest = 0
    for match in _HTML_TAG_RE.finditer(_HTML_SKIP_RE.sub("", text)):
        closing, name, self_closing = match.groups()
        name = name.lower()
        if closing:
            for i in range(len(stack) - 1, -1, -1):
                if stack[i] == name:
                    del stack[i:]
                    break
        elif name not in _HTML_VOID and not self_closing:
            stack.append(name)
            if len(stack) > deepest:
                deepest = len(stack)
                if deepest > limit:
                    break
    return deepest


def _html_depth(soup: Any) -> int:
    """The parsed tree's real element depth, without recursion."""
    deepest = 0
    stack = [(soup, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in getattr(node, "contents", ()):
            if getattr(child, "contents", None) is not None and getattr(child, "name", None):
                stack.append((child, depth + 1))
    return deepest


def _html_parts(
    text: str, work: Path, display: str = "upload", limits: KnowledgeLimits = KnowledgeLimits(),
    deadline: Deadline | None = None,
) -> list[tuple[str, dict]]:
    """The text of each `<body>` (or of the whole fragment), one line per block element.

    Equivalent to dropping scripts, styles and comments, putting a line break after block
    elements, `<br>` and a space after table cells, then `HTMLTagReader(tag="body")` on the
    result, but done in one iterative walk over the parsed tree: bs4's serializer compares
    tags structurally (recursive `Tag.__eq__`) and each `insert_after` scans its siblings,
    so the serialize-and-reparse round trip is quadratic and overflows the stack on deep
    nesting (100,000 nested `<div>`s: 7 minutes, then RecursionError).
    """
    from bs4 import BeautifulSoup, CData, NavigableString

    deadline = deadline or Deadline(limits.max_parse_seconds, display)
    depth_refusal = (
        f"{display}: the HTML nests elements {{depth}} deep; the limit is "
        f"{limits.max_html_depth:,} levels; simplify the page or upload it as plain text."
    )
    estimate = _html_depth_estimate(text, limits.max_html_depth)
    if estimate > limits.max_html_depth:
        raise InvalidUpload(depth_refusal.format(depth=f"more than {limits.max_html_depth:,}"))
    soup = BeautifulSoup(text, "html.parser")
    deadline.check("parsing the HTML")
    depth = _html_depth(soup)
    if depth > limits.max_html_depth:
        raise InvalidUpload(depth_refusal.format(depth=f"{depth:,}"))

    title = " ".join(soup.title.get_text(" ").split()) if soup.title else ""
    drop = frozenset(_HTML_DROP)
    blocks = frozenset(_HTML_BLOCKS)
    text_types = (NavigableString, CData)

    def text_of(node: Any) -> str:
        out: list[str] = []
        stack: list[Any] = list(reversed(node.contents))
        while stack:
            item = stack.pop()
            if isinstance(item, tuple):  # a separator due after an element's content
                out.append(item[0])
            elif isinstance(item, NavigableString):
                if type(item) in text_types:
                    out.append(str(item))
            elif item.name in drop:
                continue
            elif item.name == "br":
                out.append("\n")
            else:
                if item.name in blocks:
                    stack.append(("\n",))
                elif item.name in ("td", "th"):
                    stack.append((" ",))
                stack.extend(reversed(item.contents))
        return "".join(out)

    bodies = soup.find_all("body") or [soup]
    parts = []
    for body in bodies:
        pieces = []
        for child in body.contents:
            if isinstance(child, NavigableString):
                if type(child) in text_types and child.strip():
                    pieces.append(child.strip())
            elif child.name == "body" or child.name in drop or child.name == "br":
                continue
            else:
                pieces.append(text_of(child).strip())
        lines = (" ".join(line.split()) for line in "\n".join(pieces).split("\n"))
        parts.append(("\n".join(lines), {}))
        deadline.check("extracting the HTML text")
    if title and parts and not parts[0][0].lstrip().startswith(title):
        parts[0] = (f"{title}\n\n{parts[0][0]}", parts[0][1])
    return parts


# --------------------------------------------------------------------------------------------
# images


def _load_image(data: bytes, display: str, store_dir: Path, limits: KnowledgeLimits) -> LoadedFile:
    attachment = ingest_upload(
        data,
        store_dir=store_dir,
        limits=UploadLimits(
            max_bytes=limits.max_file_bytes,
            max_pixels=limits.max_pixels,
            formats=("PNG", "JPEG", "WEBP"),
        ),
        original_name=display,
    )
    return LoadedFile(
        sha256=attachment.sha256,
        display_name=attachment.display_name,
        kind="image",
        size_bytes=attachment.size_bytes,
        path=attachment.path,
        documents=[],
        width=attachment.width,
        height=attachment.height,
    )
