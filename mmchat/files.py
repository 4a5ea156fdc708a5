"""File handling shared by image uploads (`mmchat.attachments`) and knowledge uploads
(`mmchat.knowledge.loaders`).

What this module does:

* `read_limited`: reads a regular file only after its size (from `os.stat`) passes the
  caller's check, and never more than the limit even if the file grows meanwhile;
* `sniff`: says what a file is from its first bytes (magic numbers of images, archives,
  documents, media, executables; else UTF-8 text, HTML, XML or SVG), for messages that
  name what was uploaded instead of "cannot identify";
* `store_atomic`: keeps an upload as `store_dir/<sha256><ext>`: written to a temporary file
  inside `store_dir`, flushed, and renamed into place with `os.replace`, so a reader never
  sees a half-written copy, identical uploads are stored once, and the user's file name never
  becomes part of a path;
* `staged_folder`: builds a folder under a temporary name beside its target and renames it
  into place only when the build finished, so a reader never sees a half-written folder
  (the adapter store's publishing step); the temporary name carries the builder's pid, and
  `remove_stale_staging` removes only the leftovers of processes that are gone (or of builds
  older than an hour), so two processes sharing a folder never delete each other's work;
* `zip_member_problem`: why a zip member's name or kind is unsafe to use (climbing `..`,
  absolute paths, drive letters, backslashes, NUL bytes, links, encryption), shared by
  adapter zips and dataset zips;
* `human_bytes`: sizes for messages.

Errors are `mmchat.errors.InvalidUpload` naming the file by its display name. What it does
not do: no decoding of images or documents, no limits of its own (callers pass theirs), no
deletion of stored files; it imports nothing heavy (no Pillow, torch or gradio).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from mmchat.errors import InvalidUpload

__all__ = ["human_bytes", "read_limited", "remove_stale_staging", "sniff", "staged_folder", "store_atomic",
           "zip_member_problem"]

STAGING_PREFIX = ".staging-"  # folders being built: .staging-<target>-<pid>-<random>
STAGING_MAX_AGE_S = 3600  # a build this old is a leftover even if its pid was reused since


def human_bytes(n: int) -> str:
    """`n` bytes for a message: "512 bytes", "1.5 KB", "20 MB", "2 GB"."""
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3)):
        if n < scale * 1024 or unit == "GB":
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    raise AssertionError("unreachable")


def read_limited(
    path: str, display: str, max_bytes: int, check_size: Callable[[int], None], accepted: str
) -> bytes:
    """Read a regular file after checking its size from `os.stat`; never more than `max_bytes`.

    `check_size(n)` raises the caller's own size message; `accepted` names what the caller
    accepts, for the not-a-regular-file message. Shared by image and knowledge uploads.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidUpload(f"{display}: file not found; upload it again.") from None
    except OSError as err:
        raise InvalidUpload(f"{display}: file cannot be read ({err.strerror or err}).") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidUpload(f"{display}: not a regular file; accepted: {accepted}.")
    check_size(st.st_size)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise InvalidUpload(f"{display}: file cannot be read ({err.strerror or err}).") from None
    check_size(len(data))  # it may have changed since the stat
    return data


# Magic bytes of common files, for a friendlier message than "cannot identify image file".
# (kind, label): kind "image" = an image format (accepted or not), "other" = not an image.
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image", "PNG"),
    (0, b"\xff\xd8\xff", "image", "JPEG"),
    (0, b"GIF87a", "image", "GIF"),
    (0, b"GIF89a", "image", "GIF"),
    (0, b"BM", "image", "BMP"),
    (0, b"II*\x00", "image", "TIFF"),
    (0, b"MM\x00*", "image", "TIFF"),
    (0, b"\x00\x00\x01\x00", "image", "ICO"),
    (0, b"8BPS", "image", "PSD"),
    (0, b"\x00\x00\x00\x0cjP  ", "image", "JPEG 2000"),
    (0, b"\xff\x0a", "image", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "image", "JPEG XL"),
    (0, b"%PDF-", "other", "PDF"),
    (0, b"PK\x03\x04", "other", "ZIP"),
    (0, b"PK\x05\x06", "other", "ZIP"),
    (0, b"\x1f\x8b", "other", "GZIP"),
    (0, b"7z\xbc\xaf\x27\x1c", "other", "7Z"),
    (0, b"Rar!\x1a\x07", "other", "RAR"),
    (0, b"\x7fELF", "other", "ELF executable"),
    (0, b"MZ", "other", "Windows executable"),
    (0, b"%!PS", "other", "PostScript"),
    (0, b"ID3", "other", "MP3"),
    (0, b"OggS", "other", "OGG"),
    (0, b"fLaC", "other", "FLAC"),
    (0, b"\x1aE\xdf\xa3", "other", "Matroska/WebM video"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "other", "MS Office document"),
    (0, b"SQLite format 3\x00", "other", "SQLite database"),
)
_ISO_BMFF_BRANDS = {
    b"heic": ("image", "HEIC"), b"heix": ("image", "HEIC"), b"hevc": ("image", "HEIC"),
    b"mif1": ("image", "HEIF"), b"msf1": ("image", "HEIF"), b"avif": ("image", "AVIF"),
    b"avis": ("image", "AVIF"), b"qt  ": ("other", "QuickTime video"),
}


def sniff(data: bytes) -> tuple[str, str] | None:
    """Guess what `data` is from its first bytes: ("image"|"other", label) or None."""
    head = data[:64]
    if head[:4] == b"RIFF" and len(head) >= 12:
        kind = head[8:12]
        if kind == b"WEBP":
            return "image", "WEBP"
        if kind == b"WAVE":
            return "other", "WAV audio"
        if kind == b"AVI ":
            return "other", "AVI video"
    if head[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(head[8:12], ("other", "MP4/MOV video"))
    for offset, magic, kind, label in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind, label
    return _sniff_text(data[:4096])


def _sniff_text(sample: bytes) -> tuple[str, str] | None:
    if not sample or b"\x00" in sample:
        return None
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(sample) - 3:  # not just a character cut at the sample's end
            return None
        text = sample[: err.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    if printable < 0.95 * max(len(text), 1):
        return None
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in lowered[:1024]:
        return "image", "SVG"
    if lowered.startswith(("<!doctype html", "<html")):
        return "other", "HTML"
    if lowered.startswith("<?xml"):
        return "other", "XML"
    return "other", "text"


def store_atomic(data: bytes, sha: str, ext: str, store_dir: Path, display: str) -> Path:
    """Write `data` as `store_dir/<sha><ext>` atomically; reuse an existing complete copy."""
    store_dir = store_dir.expanduser().absolute()
    target = store_dir / f"{sha}{ext}"
    try:
        if target.is_file() and target.stat().st_size == len(data):
            return target  # written earlier by os.replace, so complete
        store_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store_dir, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as err:
        # The server's disk, not the user's file: still shown, since the upload failed.
        raise InvalidUpload(
            f"{display}: the upload could not be stored on the server "
            f"({err.strerror or err}); try again later."
        ) from None
    return target


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield an empty folder beside `target`; when the block ends normally, rename it to `target`.

    On an exception the partial folder is removed and `target` is untouched. An existing
    `target` is refused (callers delete first when replacing is meant).
    """
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The pid lets another process sharing the folder (a trainer, the server) tell a build in
    # progress from a leftover; mkdtemp adds the random part.
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; the result is an ordinary folder
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc here: os.kill said it exists


def remove_stale_staging(parent: Path, max_age_s: float = STAGING_MAX_AGE_S) -> list[Path]:
    """Remove the staged folders under `parent` whose builder is gone; returns what was removed.

    A leftover is one whose pid no longer runs, one whose name carries no pid (an older
    format), or one untouched for `max_age_s` (its pid may since belong to another process).
    Builds of live processes, this one included, are left alone.
    """
    import time

    removed: list[Path] = []
    try:
        entries = list(Path(parent).glob(f"{STAGING_PREFIX}*"))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        parts = entry.name[len(STAGING_PREFIX):].rsplit("-", 2)  # target (may hold '-'), pid, random
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() and parts[0] and parts[2] else 0
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue  # its builder just renamed or removed it
        if pid and process_alive(pid) and age < max_age_s:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


ZIP_IGNORED_PARTS = ("__MACOSX", ".DS_Store")  # what macOS's archiver adds
SAFE_NAMES = "plain relative member names (no '..', absolute paths, drive letters or links)"


def zip_file_members(
    infos: list[zipfile.ZipInfo], *, max_total_bytes: int, max_ratio: float, ratio_floor_bytes: int,
    refuse: Callable[[str, str], Exception],
) -> Iterator[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The members of a zip that hold files, with their path parts, each checked before use: a
    safe name (`zip_member_problem`), the running uncompressed total, and the expansion ratio of
    members over `ratio_floor_bytes` (a zip bomb); folders and macOS's extras are skipped.
    `refuse(what, accepted)` makes the exception raised for the first problem."""
    total = 0
    for info in infos:
        why = zip_member_problem(info)
        if why:
            raise refuse(f"member {info.filename!r} {why}", SAFE_NAMES)
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or not parts or any(p in ZIP_IGNORED_PARTS or p.startswith("._") for p in parts):
            continue
        total += info.file_size
        if total > max_total_bytes:
            raise refuse(f"its members hold over {human_bytes(max_total_bytes)} uncompressed",
                         f"at most {human_bytes(max_total_bytes)} uncompressed in all")
        if info.file_size > ratio_floor_bytes and info.file_size > max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise refuse(f"member {info.filename!r} expands {ratio:,.0f}x ({human_bytes(info.compress_size)} to "
                         f"{human_bytes(info.file_size)}), over the limit of {max_ratio:g}x (a zip bomb?)",
                         f"members that expand at most {max_ratio:g}x")
        yield info, parts


def zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why the member `info` must not be used ("climbs out of the folder with '..'"), else None."""
    raw = info.filename
    if "\x00" in raw:
        return "has a NUL byte in its name"
    if "\\" in raw:
        return "uses backslashes (a Windows path)"
    if raw.startswith("/"):
        return "is an absolute path"
    if re.match(r"[A-Za-z]:", raw):
        return "starts with a drive letter"
    if ".." in raw.split("/"):
        return "climbs out of the folder with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None
