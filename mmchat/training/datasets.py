"""Dataset files -> validated training `Example`s, with a report of every bad row; length
checks, the train/eval split, caption:VQA mixing, and the preview of a row as the model sees it.

`read_dataset(path, work_dir, limits)` decides what the file is by its content (never its
extension) and reads:

* JSONL, one row per line; a JSON list of rows; a zip holding ONE `.jsonl`/`.json` file plus
  the images its rows name (paths relative to that file, inside the zip);
* the app's own chat export (`chat.json` + `images/`, as a zip or as the file on disk): each
  answer becomes one single-turn example (its question and that question's photos; earlier
  turns are not included). With `kept_only` (the default) the answers that did not end on
  their own are left out (stopped, failed, or cut at the token limit), and so are answers
  written from retrieved documents (the export does not hold the sources the model read);
  undone answers are never in an export.

Row formats (a row may also carry "kind" and "expected", for mixing and evaluation):

* `{"question", "answer", "image_label"?}` (today's; "image"/"images" too);
* Alpaca: `{"instruction", "input"?, "output", "image"?|"images"?}` (the question is the
  instruction, then a blank line and the input when there is one);
* conversations: `{"messages": [{"role": "system"|"user"|"assistant", "content"}...],
  "images"?: [...]}` (OpenAI style; content may be a list of `{"type": "text"|"image"}`
  items), or ShareGPT's `{"conversations": [{"from": "human"|"gpt"|"system", "value"}...]}`.
  Every assistant turn is learned. A row's own system message is not trained on: the chat's
  configured system prompt is (what chat sends), and the report says how many rows had one.

Images: user texts may hold `<image>` markers; their number must equal the row's images, and
image i goes into the user turn holding marker i. With images and no markers, the images go
before the first user text (where chat puts an attached photo). Each image is validated with
the chat's own upload checks (`mmchat.attachments.ingest_upload`, so a refused image gets the
chat's message) and copied into `work_dir/images/<sha256><ext>`; `Example.images` hold those
copies. Nothing is written outside `work_dir`, and zips are never extracted.

A problem with one row becomes a `BadRow` (where, reason): not JSON, not an object, a missing,
empty or unknown field, an image missing / unreadable / refused, markers and images differing
in number, no assistant turn, a row over `max_row_bytes`, an exact duplicate of an earlier row.
A problem with the whole file raises `UserFacingError` naming the file and what is accepted,
before any row is parsed where possible: not JSON/JSONL/zip, empty, over `max_bytes`, more
rows than `max_rows`, a zip bomb, unsafe member names (`..`, absolute paths, links), several
data files in one zip.

`builtin_dataset` generates a built-in text style (`builtin_data`); `shapes_dataset` draws the
built-in pictures of coloured shapes (`VISUAL_BUILTIN`, for the offline model's image pathway)
into a folder the caller gives, in the caption : VQA ratio asked.

`check_lengths` renders every usable row with the real tokenizer and template (`Renderer`) and
refuses those over the cutoff with their token count; `preview_html` shows one rendered row
with the supervised tokens marked, read from the labels the collator gets. It does not train,
load models or tokenizers (callers pass a `Renderer`), or import torch.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import random
import re
import stat
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload, UserFacingError
from mmchat.files import SAFE_NAMES, human_bytes, sniff, zip_file_members
from mmchat.training.examples import (
    IGNORE,
    IMAGE_MARKER,
    Encoded,
    Example,
    Renderer,
    image_labels_for,
    strip_markers,
    supervised_spans,
)

__all__ = [
    "BUILTIN", "VISUAL_BUILTIN", "BadRow", "DatasetLimits", "DatasetReport", "LengthReport", "bad_rows_table",
    "builtin_dataset", "check_lengths", "is_caption", "mix", "preview_html", "read_dataset", "report_markdown",
    "shapes_dataset", "split",
]

ACCEPTED = ("JSONL (one row per line), a JSON list of rows, a zip of one .jsonl/.json file with the images it "
            "names, or a chat export (.zip or chat.json); rows: {\"question\", \"answer\"}, "
            "{\"instruction\", \"output\"} or {\"messages\": [...]}")
ROW_FORMATS = ('{"question", "answer", "image_label"?}, {"instruction", "input"?, "output", "image"?}, '
               '{"messages": [{"role", "content"}...], "images"?} or {"conversations": [{"from", "value"}...]}')
FORMATS = ("question/answer", "alpaca", "messages", "chat export")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}
IMAGES_DIR = "images"
_COMMON_KEYS = {"kind", "expected"}
_QA_KEYS = {"question", "answer", "image_label", "image_labels", "image", "images"} | _COMMON_KEYS
_ALPACA_KEYS = {"instruction", "input", "output", "image", "images"} | _COMMON_KEYS
_MESSAGES_KEYS = {"messages", "images"} | _COMMON_KEYS
_SHAREGPT_KEYS = {"conversations", "images", "system"} | _COMMON_KEYS
# Answers that did not end on their own (GenerationStats.finish_reason): not what the user kept.
_UNFINISHED = {"cancelled": "it was stopped before it ended", "error": "it failed",
               "length": "it was cut at the token limit"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class DatasetLimits:
    """What a dataset file may hold. `max_unpacked_bytes` (0: 4 x `max_bytes`) and `max_ratio`
    limit what a zip expands to; `upload` are the chat's image limits, used for every image."""

    max_bytes: int = 100 * 2**20  # the file (for a zip: the zip, and its data file unpacked)
    max_rows: int = 20_000
    max_row_bytes: int = 2**20
    max_images: int = 4  # per row
    upload: UploadLimits = field(default_factory=UploadLimits)
    max_unpacked_bytes: int = 0
    max_ratio: float = 100.0  # uncompressed / compressed, for zip members over 1 MB

    @classmethod
    def from_config(cls, config: Any) -> "DatasetLimits":
        """The limits an `AppConfig` sets: `[finetune] max_rows, max_upload_mb` and `[limits]`."""
        return cls(max_bytes=config.finetune.max_upload_mb * 2**20, max_rows=config.finetune.max_rows,
                   max_images=config.limits.max_images_per_message, upload=config.limits)

    @property
    def unpacked_bytes(self) -> int:
        return self.max_unpacked_bytes or 4 * self.max_bytes

    @property
    def max_members(self) -> int:
        return self.max_rows * self.max_images + 64


@dataclass(frozen=True)
class BadRow:
    where: str  # "line 7", "line 3 messages[2]", "chat.json messages[4]"
    reason: str  # what is wrong and what is accepted


@dataclass
class DatasetReport:
    source: str  # the file's display name, or "builtin:NAME"
    formats: dict[str, int] = field(default_factory=dict)  # usable rows per format
    examples: list[Example] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # where each example came from (parallel to examples)
    bad: list[BadRow] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)  # usable rows per kind (see `kind_of`)
    skipped: list[BadRow] = field(default_factory=list)  # fine rows left out on purpose (chat export, kept_only)
    notes: list[str] = field(default_factory=list)  # what the reader changed or ignored, for the summary

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "usable": len(self.examples), "bad": len(self.bad),
                "skipped": len(self.skipped), "formats": dict(self.formats), "kinds": dict(self.kinds)}


@dataclass
class LengthReport:
    """Every usable example rendered: those that fit (with their encodings) and those that do not."""

    encoded: list[Encoded]  # parallel to examples
    examples: list[Example]
    lines: list[str]
    bad: list[BadRow]
    p50: int
    p95: int
    max: int
    cutoff: int


# ------------------------------------------------------------------------------ reading


class _Bad(Exception):
    """One row's problem (becomes a BadRow); `where` refines the row's location."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason, self.where = reason, where


def _refuse(name: str, what: str, accepted: str = ACCEPTED) -> UserFacingError:
    return UserFacingError(f"{name}: {what}; accepted: {accepted}")


def read_dataset(path: Path, work_dir: Path, limits: DatasetLimits = DatasetLimits(), *, kept_only: bool = True,
                 name: str | None = None, seed: int = 0) -> DatasetReport:
    """Read and validate the dataset file `path` (see the module's docstring for what is accepted).

    `work_dir`: where image copies go (`work_dir/images/`); `name`: the file's name as the user
    knows it (default: the path's); `seed`: seeds the invented classifier output of
    `image_label` rows. Raises `UserFacingError` for a problem with the whole file.
    """
    path = Path(path)
    name = name or path.name
    try:
        st = os.stat(path)
    except OSError as err:
        raise UserFacingError(f"{name}: the file cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(name, "not a regular file")
    if st.st_size == 0:
        raise _refuse(name, "the file is empty (0 bytes)")
    if st.st_size > limits.max_bytes:
        raise _refuse(name, f"the file is {human_bytes(st.st_size)}, over the limit of {human_bytes(limits.max_bytes)}",
                      f"a dataset file of at most {human_bytes(limits.max_bytes)}")
    with open(path, "rb") as fh:
        data = fh.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:  # it grew since the stat
        raise _refuse(name, f"the file is over the limit of {human_bytes(limits.max_bytes)}")
    reader = _Reader(name, Path(work_dir), limits, kept_only, seed)
    kind = sniff(data[:4096])
    if kind and kind[1] == "ZIP":
        reader.read_zip(path)
    else:
        base = path.resolve().parent
        reader.read_text(data, name, lambda rel: _disk_image(base, rel, limits.upload))
    return reader.finish()


def _disk_image(base: Path, rel: str, upload: UploadLimits) -> Any:
    """The image `rel` beside a dataset on disk: its path (ingest_upload checks its size first)."""
    target = (base / rel).resolve()
    if base not in target.parents:
        raise _Bad(f"image {rel!r} points outside the dataset's folder; accepted: a path relative to it")
    if not target.is_file():
        raise _Bad(f"image {rel!r} is not found beside the dataset; accepted: a path relative to the dataset file "
                   "(or upload a zip holding the dataset and its images)")
    return str(target)


class _Reader:
    def __init__(self, name: str, work_dir: Path, limits: DatasetLimits, kept_only: bool, seed: int) -> None:
        self.name, self.work_dir, self.limits, self.kept_only, self.seed = name, work_dir, limits, kept_only, seed
        self.report = DatasetReport(source=name)
        self.seen: dict[str, str] = {}  # content key -> where it was first
        self.images: dict[str, Any] = {}  # relative path -> Attachment or _Bad
        self.system_rows = 0
        self.trailing_rows = 0

    # ----- containers

    def read_zip(self, path: Path) -> None:
        name, limits = self.name, self.limits
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
            raise _refuse(name, f"not a readable zip ({err})") from None
        with archive:
            infos = archive.infolist()
            if len(infos) > limits.max_members:
                raise _refuse(name, f"the zip has {len(infos)} members, over the limit of {limits.max_members}")
            members: dict[str, zipfile.ZipInfo] = {}

            def refuse(what: str, accepted: str) -> UserFacingError:
                return _refuse(name, what, f"a zip with {accepted}" if accepted == SAFE_NAMES else accepted)

            for info, _ in zip_file_members(infos, max_total_bytes=limits.unpacked_bytes, max_ratio=limits.max_ratio,
                                            ratio_floor_bytes=2**20, refuse=refuse):
                members[PurePosixPath(info.filename).as_posix()] = info
            data_files = [m for m in members if m.lower().endswith((".jsonl", ".json"))]
            if not data_files:
                raise _refuse(name, "the zip holds no .jsonl or .json file")
            if len(data_files) > 1:
                shown = ", ".join(sorted(data_files)[:5]) + (", ..." if len(data_files) > 5 else "")
                raise _refuse(name, f"the zip holds {len(data_files)} data files ({shown})",
                              "a zip of ONE .jsonl/.json file plus the images it names")
            member = data_files[0]
            info = members[member]
            if info.file_size > limits.max_bytes:
                raise _refuse(name, f"{member} is {human_bytes(info.file_size)} unpacked, over the limit of "
                              f"{human_bytes(limits.max_bytes)}")
            data = _read_member(archive, info, limits.max_bytes)
            if data is None:
                raise _refuse(name, f"{member} cannot be read from the zip, or is over "
                              f"{human_bytes(limits.max_bytes)} unpacked")
            folder = PurePosixPath(member).parent

            def fetch(rel: str) -> Any:
                key = (folder / rel).as_posix() if str(folder) != "." else PurePosixPath(rel).as_posix()
                image = members.get(key)
                if image is None:
                    raise _Bad(f"image {rel!r} is not in the zip (looked for {key!r}); accepted: a path relative to "
                               f"{PurePosixPath(member).name} inside the zip")
                if image.file_size > limits.upload.max_bytes:
                    return _SizeOnly(image.file_size)
                content = _read_member(archive, image, limits.upload.max_bytes)
                if content is None:
                    raise _Bad(f"image {rel!r} cannot be read from the zip")
                return content

            self.read_text(data, f"{name}: {member}" if member != PurePosixPath(member).name else name, fetch,
                           member=PurePosixPath(member).name)

    def read_text(self, data: bytes, display: str, fetch: Callable[[str], Any], member: str = "") -> None:
        """Parse JSON/JSONL `data`; `fetch(rel)` gives an image's bytes or path (or raises _Bad)."""
        self.fetch = fetch
        kind = sniff(data[:4096])
        if kind is not None and kind[1] != "text":
            raise _refuse(display, f"not JSON or JSONL (it looks like {kind[1]})")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise _refuse(display, f"not UTF-8 text (byte {err.start}); not JSON or JSONL") from None
        stripped = text.lstrip()
        if not stripped:
            raise _refuse(display, "the file is empty (only blank lines)")
        first = stripped[0]
        if first == "[":
            self._read_list(text, display)
        elif first == "{":
            whole = _whole_object(text)
            if isinstance(whole, dict) and _is_chat_export(whole):
                self._read_chat_export(whole, member or display)
            elif whole is not None:  # one row (perhaps over several lines)
                self._count_rows(1, display)
                if len(data) > self.limits.max_row_bytes:
                    self._bad("line 1", f"the row is {human_bytes(len(data))}, over the limit of "
                              f"{human_bytes(self.limits.max_row_bytes)} per row")
                else:
                    self._row(whole, "line 1", len(data))
            else:
                self._read_jsonl(text, display)
        else:
            shown = stripped[:30].split("\n")[0]
            raise _refuse(display, f"not JSON or JSONL (it starts with {shown!r})")

    def _count_rows(self, n: int, display: str) -> None:
        if n > self.limits.max_rows:
            raise _refuse(display, f"it has {n:,} rows, more than the limit of {self.limits.max_rows:,}",
                          f"at most {self.limits.max_rows:,} rows ([finetune] max_rows)")

    def _read_jsonl(self, text: str, display: str) -> None:
        lines = text.split("\n")
        self._count_rows(sum(1 for line in lines if line.strip()), display)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            size = len(line.encode("utf-8"))
            if size > self.limits.max_row_bytes:
                self._bad(where, f"the row is {human_bytes(size)}, over the limit of "
                          f"{human_bytes(self.limits.max_row_bytes)} per row")
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                detail = f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else "nested too deep"
                self._bad(where, f"not JSON ({detail}); accepted: one JSON object per line")
                continue
            self._row(row, where, size)

    def _read_list(self, text: str, display: str) -> None:
        items = list(_json_list(text, display))
        self._count_rows(len(items), display)
        for line, row, size in items:
            where = f"line {line}"
            if size > self.limits.max_row_bytes:
                self._bad(where, f"the row is {human_bytes(size)}, over the limit of "
                          f"{human_bytes(self.limits.max_row_bytes)} per row")
                continue
            self._row(row, where, size)

    # ----- rows

    def _bad(self, where: str, reason: str) -> None:
        self.report.bad.append(BadRow(where, reason))

    def _row(self, row: Any, where: str, size: int) -> None:
        try:
            fmt, conversation, images, labels, extra = self._parse(row)
            self._add(fmt, conversation, images, labels, extra, where)
        except _Bad as bad:
            self._bad(f"{where} {bad.where}".strip(), bad.reason)

    def _parse(self, row: Any) -> tuple[str, list[tuple[str, str]], list[str], str, dict[str, str]]:
        """A row -> (format, turns, image paths as given, image_label, {kind, expected})."""
        if not isinstance(row, dict):
            raise _Bad(f"a JSON {_json_type(row)}, not an object; accepted: {ROW_FORMATS}")
        if "messages" in row:
            fmt, allowed = "messages", _MESSAGES_KEYS
        elif "conversations" in row:
            fmt, allowed = "messages", _SHAREGPT_KEYS
        elif {"instruction", "output"} & set(row):
            fmt, allowed = "alpaca", _ALPACA_KEYS
        elif {"question", "answer"} & set(row):
            fmt, allowed = "question/answer", _QA_KEYS
        else:
            raise _Bad(f"no known format (keys {sorted(row)[:8]}); accepted: {ROW_FORMATS}")
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise _Bad(f"unknown field(s) {unknown} for a {fmt} row; accepted: {', '.join(sorted(allowed))}")
        extra = {key: _text(row, key, required=False) for key in ("kind", "expected") if key in row}
        images = _image_list(row)
        label = ""
        if fmt == "question/answer":
            conversation = [("user", _text(row, "question")), ("assistant", _text(row, "answer"))]
            if row.get("image_label") is not None or row.get("image_labels") is not None:
                if images:
                    raise _Bad("the row has both image_label and images; accepted: one of them")
                label = _image_label(row)
        elif fmt == "alpaca":
            question = _text(row, "instruction")
            extra_input = _text(row, "input", required=False) if "input" in row else ""
            if extra_input.strip():
                question = f"{question}\n\n{extra_input}"
            conversation = [("user", question), ("assistant", _text(row, "output"))]
        elif "messages" in row:
            conversation = _messages(row["messages"], "messages", "role", "content", {r: r for r in ROLES})
        else:
            conversation = _messages(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
            if "system" in row:
                conversation.insert(0, ("system", _text(row, "system", required=False)))
        return fmt, conversation, images, label, extra

    def _add(self, fmt: str, conversation: list[tuple[str, str]], images: list[str], label: str,
             extra: dict[str, str], where: str, image_ids: Sequence[Any] = ()) -> None:
        if conversation and conversation[0][0] == "system":
            self.system_rows += 1
        while conversation and conversation[0][0] == "system":
            conversation = conversation[1:]
        if not any(role == "assistant" for role, _ in conversation):
            raise _Bad("no assistant turn; accepted: a user turn followed by an assistant answer")
        while conversation[-1][0] != "assistant":  # a question nobody answered teaches nothing
            conversation = conversation[:-1]
            self.trailing_rows += 1
        markers = 0
        for number, (role, text) in enumerate(conversation):
            if role == "assistant" and IMAGE_MARKER in text:
                raise _Bad(f"an {IMAGE_MARKER} marker is in an assistant turn (turn {number + 1}); accepted: markers "
                           "in user texts only")
            markers += text.count(IMAGE_MARKER) if role == "user" else 0
        count = len(images) + len(image_ids)
        if markers and markers != count:
            raise _Bad(f"the text has {markers} {IMAGE_MARKER} marker(s) but the row names {count} image(s); "
                       f"accepted: as many markers as images, or no markers (the images then go before the first "
                       "user text)")
        if count > self.limits.max_images:
            raise _Bad(f"the row names {count} images; the limit is {self.limits.max_images} per row")
        copies = [self._image(rel, n, len(images)) for n, rel in enumerate(images)] + list(image_ids)
        labels: tuple[tuple[str, float], ...] = ()
        if label:
            # As examples.read_jsonl seeds them (by line number), so a file keeps its dataset digest.
            number = re.fullmatch(r"line (\d+)", where)
            digest = hashlib.sha256(f"{self.seed}:{number.group(1) if number else where}:{label}".encode()).digest()
            try:
                labels = image_labels_for(label, random.Random(digest))
            except UserFacingError as err:
                raise _Bad(str(err)) from None
        key = json.dumps([conversation, [c.sha256 for c in copies], label], ensure_ascii=False)
        if key in self.seen:
            raise _Bad(f"exact duplicate of {self.seen[key]}")
        self.seen[key] = where
        question = next(text for role, text in reversed(conversation) if role == "user")
        answer = conversation[-1][1]
        single = len(conversation) == 2 and conversation[0][0] == "user"
        example = Example(
            strip_markers(question), answer, labels, extra.get("kind", ""), extra.get("expected", ""),
            extra={"image_names": [c.display_name for c in copies]} if copies else {},
            turns=() if single else tuple(conversation),
            images=tuple(str(c.path) for c in copies),
        )
        self.report.examples.append(example)
        self.report.lines.append(where)
        self.report.formats[fmt] = self.report.formats.get(fmt, 0) + 1

    def _image(self, rel: str, number: int, count: int) -> Any:
        """The validated copy of image `rel` (cached: a photo used by many rows is checked once)."""
        where = "image" if count == 1 else f"images[{number}]"
        if rel not in self.images:
            self.images[rel] = self._ingest(rel)
        found = self.images[rel]
        if isinstance(found, _Bad):
            raise _Bad(found.reason, where)
        return found

    def _ingest(self, rel: str) -> Any:
        from mmchat.attachments import ingest_upload

        if _URL.match(rel) or rel.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", rel) or "\\" in rel:
            return _Bad(f"image {rel!r} is not a plain relative path; accepted: a path relative to the dataset "
                        "file, like images/cat.jpg (no URLs, absolute paths or '..')")
        try:
            source = self.fetch(rel)
            if isinstance(source, _SizeOnly):
                return _Bad(source.message(rel, self.limits.upload))
            return ingest_upload(source, store_dir=self.work_dir / IMAGES_DIR, limits=self.limits.upload,
                                 original_name=rel)
        except _Bad as bad:
            return bad
        except InvalidUpload as err:  # the chat's own message, naming the image
            return _Bad(str(err))

    # ----- chat exports

    def _read_chat_export(self, payload: dict[str, Any], display: str) -> None:
        from mmchat.attachments import ingest_upload
        from mmchat.session import _validated_export

        try:
            history, entries, _ = _validated_export(payload, display)
        except InvalidUpload as err:
            raise UserFacingError(f"{err}; accepted: a chat export as mmchat writes it") from None
        self._count_rows(sum(1 for m in history if m.role == "assistant"), display)
        copies: dict[str, Any] = {}

        def copy(sha: str) -> Any:
            if sha not in copies:
                entry = entries[sha]
                try:
                    source = self.fetch(entry["file"])
                    if isinstance(source, _SizeOnly):
                        raise _Bad(source.message(entry["file"], self.limits.upload))
                    attachment = ingest_upload(source, store_dir=self.work_dir / IMAGES_DIR, limits=self.limits.upload,
                                               original_name=entry.get("name") or entry["file"])
                    if attachment.sha256 != sha:
                        raise _Bad(f"image {entry['file']!r} does not match its hash in the export")
                    copies[sha] = attachment
                except _Bad as bad:
                    copies[sha] = bad
                except InvalidUpload as err:
                    copies[sha] = _Bad(str(err))
            if isinstance(copies[sha], _Bad):
                raise copies[sha]
            return copies[sha]

        question = None
        for index, message in enumerate(history):
            where = f"{display} messages[{index}]"
            if message.role == "user":
                question = message
                continue
            if message.role != "assistant":
                continue
            try:
                if question is None:
                    raise _Bad("an answer with no question before it")
                reason = (message.stats or {}).get("finish_reason", "")
                if self.kept_only and reason in _UNFINISHED:
                    self.report.skipped.append(BadRow(where, f"left out: {_UNFINISHED[reason]} (kept answers only)"))
                    continue
                if self.kept_only and (message.retrieval or {}).get("used"):
                    self.report.skipped.append(BadRow(where, "left out: it was written from retrieved documents, "
                                                      "which the export does not hold (kept answers only)"))
                    continue
                if not message.text.strip() or not question.text.strip():
                    raise _Bad(f"the {'answer' if not message.text.strip() else 'question'} is empty; "
                               "accepted: a non-empty text")
                attached = [copy(sha) for sha in question.image_ids]
                text = question.text.replace(IMAGE_MARKER, "")  # typed text, not a marker: images come from the chat
                self._add("chat export", [("user", text), ("assistant", message.text)], [], "", {}, where, attached)
            except _Bad as bad:
                self._bad(where, bad.reason)
            question = None

    def finish(self) -> DatasetReport:
        report = self.report
        report.kinds = dict(Counter(kind_of(e) for e in report.examples))
        if self.system_rows:
            report.notes.append(f"{self.system_rows} row(s) carry their own system message; training uses the chat's "
                                "system prompt instead (what chat sends)")
        if self.trailing_rows:
            report.notes.append(f"{self.trailing_rows} unanswered user turn(s) at the end of conversations are not "
                                "trained on")
        return report


@dataclass(frozen=True)
class _SizeOnly:
    """A zip member too large to read: refused with the chat's size message, unread."""

    size: int

    def message(self, rel: str, upload: UploadLimits) -> str:
        from mmchat.attachments import _check_size  # the chat's own size message

        try:
            _check_size(self.size, rel, upload)
        except InvalidUpload as err:
            return str(err)
        return f"{rel}: file is {human_bytes(self.size)}"


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | None:
    """The member's bytes, or None when it cannot be read or holds more than `limit` (headers can lie)."""
    try:
        with archive.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError):
        return None
    return None if len(data) > limit else data


def _whole_object(text: str) -> Any:
    """The JSON value `text` holds when it is one object (a chat export, a one-row file), else None."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _is_chat_export(value: dict[str, Any]) -> bool:
    from mmchat.session import EXPORT_FORMAT

    return value.get("format") == EXPORT_FORMAT


def _json_list(text: str, display: str) -> Iterator[tuple[int, Any, int]]:
    """(line, value, size in bytes) of each item of the JSON list `text`."""
    decoder = json.JSONDecoder()
    space = re.compile(r"\s*")
    position = space.match(text).end() + 1  # past "["
    line, counted = 1, 0

    def at(index: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, index)
        counted = index
        return line

    def fail(what: str, index: int) -> UserFacingError:
        column = index - text.rfind("\n", 0, index)
        return _refuse(display, f"not valid JSON: {what} at line {at(index)} column {column}")

    position = space.match(text, position).end()
    if text.startswith("]", position):
        if text[position + 1:].strip():
            raise fail("extra data after the list", position + 1)
        raise _refuse(display, "the list is empty")
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise fail(err.msg, err.pos) from None
        except RecursionError:
            raise fail("nested too deep", position) from None
        yield at(position), value, len(text[position:end].encode("utf-8"))
        position = space.match(text, end).end()
        if text.startswith(",", position):
            position = space.match(text, position + 1).end()
        elif text.startswith("]", position):
            if text[position + 1:].strip():
                raise fail("extra data after the list", position + 1)
            return
        else:
            raise fail("expected ',' or ']'", position)


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def _text(row: dict[str, Any], key: str, *, required: bool = True, where: str = "") -> str:
    value = row.get(key)
    if value is None and key not in row:
        if required:
            raise _Bad(f"{key} is missing; accepted: a non-empty string", where)
        return ""
    if not isinstance(value, str):
        raise _Bad(f"{key} is a {_json_type(value)} ({json.dumps(value)[:40]}); accepted: a string", where)
    if required and not value.strip():
        raise _Bad(f"{key} is empty; accepted: a non-empty string", where)
    return value


def _image_list(row: dict[str, Any]) -> list[str]:
    if "image" in row and "images" in row:
        raise _Bad("the row has both image and images; accepted: one of them")
    if row.get("image") is not None:
        value = row["image"]
        if not isinstance(value, str) or not value.strip():
            raise _Bad(f"image is {json.dumps(value)[:60]}; accepted: a relative path to an image file", "image")
        return [value]
    value = row.get("images")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"images is a {_json_type(value)}; accepted: a list of relative image paths", "images")
    for n, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _Bad(f"{json.dumps(item)[:60]} is not a path; accepted: a relative path to an image file",
                       f"images[{n}]")
    return list(value)


def _image_label(row: dict[str, Any]) -> str:
    if row.get("image_labels") is not None:
        raise _Bad("image_labels is written by the app, not read from datasets; accepted: image_label (an ImageNet "
                   "class name) or images")
    value = row["image_label"]
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"image_label is {json.dumps(value)[:60]}; accepted: an ImageNet class name")
    return value


def _messages(value: Any, field_name: str, role_key: str, text_key: str,
              roles: dict[str, str]) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"{field_name} is {'empty' if value == [] else 'a ' + _json_type(value)}; accepted: a list of "
                   f"{{\"{role_key}\", \"{text_key}\"}} objects")
    accepted_roles = ", ".join(dict.fromkeys(roles))
    turns: list[tuple[str, str]] = []
    for n, message in enumerate(value):
        where = f"{field_name}[{n}]"
        if not isinstance(message, dict):
            raise _Bad(f"a JSON {_json_type(message)}, not an object; accepted: {{\"{role_key}\", \"{text_key}\"}}",
                       where)
        unknown = sorted(set(message) - {role_key, text_key, "name"})
        if unknown:
            raise _Bad(f"unknown field(s) {unknown}; accepted: {role_key}, {text_key}", where)
        role = message.get(role_key)
        if role not in roles:
            shown = "missing" if role is None else f"{role!r}"
            raise _Bad(f"{role_key} {shown} is not valid; accepted: {accepted_roles}" if role is not None
                       else f"{role_key} is missing; accepted: {accepted_roles}", where)
        role = roles[role]
        text = _content(message, text_key, where)
        if role == "system" and turns:
            raise _Bad("a system message after the conversation started; accepted: a system message first only", where)
        if turns and turns[-1][0] == role:
            raise _Bad(f"two {role} turns in a row; accepted: user and assistant turns alternating", where)
        if role == "assistant" and (not turns or turns[-1][0] == "system"):
            raise _Bad("the conversation starts with an assistant turn; accepted: a user turn first", where)
        turns.append((role, text))
    return turns


def _content(message: dict[str, Any], key: str, where: str) -> str:
    value = message.get(key)
    if isinstance(value, list):  # OpenAI content parts: text items, and image items as markers
        parts = []
        for n, item in enumerate(value):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text" and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif kind in ("image", "image_url"):
                parts.append(IMAGE_MARKER)
            else:
                raise _Bad(f"{key}[{n}] is not a text or image part; accepted: {{\"type\": \"text\", \"text\"}} or "
                           "{\"type\": \"image\"}", where)
        value = "\n".join(parts)
    if value is None:
        raise _Bad(f"{key} is missing; accepted: a non-empty string", where)
    if not isinstance(value, str):
        raise _Bad(f"{key} is a {_json_type(value)}; accepted: a string", where)
    if not strip_markers(value).strip():
        raise _Bad(f"{key} is empty; accepted: a non-empty string", where)
    return value


# ------------------------------------------------------------------------------ built-in data

BUILTIN = {
    "one-word": "Short answers: one word or number, VQA style",
    "caption": "Captions: one sentence that starts \"A photo of\"",
    "json": "JSON answers: {\"answer\": ..., \"confidence\": ...}",
}


# Pictures for the offline model's image pathway (visual runs; `mmchat.training.shapes` draws them).
VISUAL_BUILTIN = {
    "shapes": "Shapes (visual): drawn pictures of coloured shapes; colour / shape / count / position questions "
              "and captions, held-out colour-shape pairs never trained on",
}
SHAPES_DEFAULT_RATIO = (0, 1)  # caption : VQA when none is set: questions only (the skills the evaluation scores)
# The tab's pictures hold one kind of object, as the headline benchmark's do (`python -m bench
# finetune --visual`: 0.87 held-out exact match in 8.4 min); with distractors (`--distractors 2`)
# a question must bind colour to shape, which a quick run does not learn yet.
SHAPES_DISTRACTORS = 0


def builtin_dataset(name: str, count: int, seed: int = 0) -> DatasetReport:
    """`count` examples of the built-in dataset `name` (`builtin_data.STYLES`); seed 0: the style's own."""
    from mmchat.training import builtin_data

    examples = builtin_data.generate(name, count, seed=seed or None)
    return DatasetReport(source=f"builtin:{name}", formats={"built-in": len(examples)}, examples=examples,
                         lines=[f"example {n}" for n in range(1, len(examples) + 1)],
                         kinds=dict(Counter(kind_of(e) for e in examples)))


def shapes_dataset(count: int, out_dir: Path, seed: int = 0, caption_to_vqa: tuple[int, int] | None = None,
                   held_out: bool = False) -> DatasetReport:
    """`count` examples of the built-in shapes dataset, each picture a PNG in `out_dir`, captions
    and questions in the `caption_to_vqa` ratio (default: questions only); `held_out=True` is the
    evaluation split (colour-shape pairs and question wordings never trained on)."""
    from mmchat.training import shapes

    ratio = caption_to_vqa or SHAPES_DEFAULT_RATIO
    examples = shapes.generate(count, seed=seed, caption_ratio=ratio, held_out=held_out, out_dir=out_dir,
                               max_distractors=SHAPES_DISTRACTORS)
    notes = [f"{'held-out' if held_out else 'training'} pictures drawn with seed {seed}, caption : VQA "
             f"{ratio[0]} : {ratio[1]}, one kind of object per picture"]
    return DatasetReport(source="builtin:shapes", formats={"built-in": len(examples)}, examples=examples,
                         lines=[f"picture {n}" for n in range(1, len(examples) + 1)],
                         kinds=dict(Counter(kind_of(e) for e in examples)), notes=notes)


# ------------------------------------------------------------------------------ lengths, split, mix


def check_lengths(report: DatasetReport, renderer: Renderer) -> LengthReport:
    """Render every usable example with `renderer`; those over `renderer.max_length` (or that
    cannot be rendered) become bad rows naming their token count and the cutoff."""
    encoded, examples, lines, bad, counts = [], [], [], [], []
    for example, where in zip(report.examples, report.lines):
        try:
            item = renderer.encode(example, check_length=False)
        except UserFacingError as err:
            bad.append(BadRow(where, str(err)))
            continue
        counts.append(len(item.input_ids))
        if len(item.input_ids) > renderer.max_length:
            bad.append(BadRow(where, f"the row is {len(item.input_ids)} tokens once rendered, more than the cutoff "
                                     f"(max_length) of {renderer.max_length}; raise max_length or shorten it"))
            continue
        encoded.append(item)
        examples.append(example)
        lines.append(where)
    ordered = sorted(counts)

    def percentile(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else 0

    return LengthReport(encoded, examples, lines, bad, percentile(0.5), percentile(0.95),
                        ordered[-1] if ordered else 0, renderer.max_length)


def split(examples: Sequence[Any], eval_fraction: float = 0.1, seed: int = 0, min_eval: int = 1,
          max_eval: int = 64) -> tuple[list[Any], list[Any]]:
    """(train, eval), each in the original order: `eval_fraction` of the items, at least
    `min_eval` and at most `max_eval`, never all of them; the same seed gives the same split."""
    if not 0 <= eval_fraction < 1:
        raise UserFacingError(f"eval_fraction {eval_fraction!r} is out of range; accepted: 0 <= value < 1")
    n = len(examples)
    want = 0 if eval_fraction == 0 else max(min_eval, round(n * eval_fraction))
    size = max(0, min(want, max_eval, n - 1))
    chosen = set(random.Random(seed).sample(range(n), size)) if size else set()
    return ([e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen])


_CAPTION_ANSWER = re.compile(r"^\s*(a|an)\s+(photo|picture|image|photograph)\s+of\b", re.I)
_CAPTION_QUESTION = re.compile(r"\b(describe|caption)\b", re.I)


def is_caption(example: Example) -> bool:
    """A caption row (kind "caption", or an answer like "A photo of ...", or a sentence answering
    a request to describe the picture) rather than a question-answer (VQA) row."""
    if example.kind in ("caption", "vqa"):
        return example.kind == "caption"
    if _CAPTION_ANSWER.match(example.answer):
        return True
    # "Describe the image." answered "cat" is a VQA row; answered with a sentence, a caption.
    return bool(_CAPTION_QUESTION.search(example.question)) and len(example.answer.split()) >= 4


def kind_of(example: Example) -> str:
    """The kind a row is counted under: its own `kind`, else "caption", "conversation", "vqa" (a
    question about an image) or "text"."""
    if example.kind:
        return example.kind
    if is_caption(example):
        return "caption"
    if example.turns:
        return "conversation"
    return "vqa" if example.images or example.image_labels else "text"


def mix(examples: Sequence[Example], caption_to_vqa: tuple[int, int] | None, seed: int = 0) -> list[Example]:
    """Subsample so captions and the other rows stand `caption_to_vqa` (e.g. (2, 1)), keeping as
    many rows as the ratio allows, in the original order; unchanged when None or one kind is absent."""
    if caption_to_vqa is None:
        return list(examples)
    c, v = caption_to_vqa
    if not (isinstance(c, int) and isinstance(v, int) and c > 0 and v > 0):
        raise UserFacingError(f"caption : VQA ratio {caption_to_vqa!r} is not valid; accepted: two integers >= 1, "
                              "like 2 : 1")
    captions = [i for i, e in enumerate(examples) if is_caption(e)]
    others = [i for i, e in enumerate(examples) if not is_caption(e)]
    if not captions or not others:
        return list(examples)
    scale = min(len(captions) / c, len(others) / v)
    rng = random.Random(seed)
    keep = set(rng.sample(captions, max(1, math.floor(scale * c)))) | set(rng.sample(others, max(1, math.floor(scale * v))))
    return [e for i, e in enumerate(examples) if i in keep]


# ------------------------------------------------------------------------------ showing it


def preview_html(renderer: Renderer, example: Example, encoded: Encoded) -> str:
    """The row as the model sees it: the template's text with its special tokens, HTML-escaped in
    a <pre>, the supervised tokens in `<mark class="mmchat-supervised">` (from `encoded.labels`),
    and the row's image files named above it."""
    parts = ['<div class="mmchat-preview">']
    names = example.extra.get("image_names") or [Path(p).name for p in example.images]
    if names:
        items = "".join(f"<li>Image {n}: {html.escape(str(name))}</li>" for n, name in enumerate(names, start=1))
        parts.append(f'<ol class="mmchat-images">{items}</ol>')
    elif example.image_labels:
        parts.append('<ol class="mmchat-images"><li>Image 1: an invented photo of '
                     f"{html.escape(example.image_labels[0][0])} (image_label)</li></ol>")
    body = "".join(f'<mark class="mmchat-supervised">{html.escape(text)}</mark>' if counted else html.escape(text)
                   for text, counted in supervised_spans(renderer.tokenizer, encoded))
    parts.append(f'<pre style="white-space: pre-wrap">{body}</pre>')
    counted = sum(label != IGNORE for label in encoded.labels)
    parts.append(f'<p class="mmchat-counts">{len(encoded.input_ids)} tokens, {counted} supervised</p></div>')
    return "".join(parts)


def bad_rows_table(report: DatasetReport, lengths: LengthReport | None = None) -> list[list[str]]:
    """[where, reason] for every bad row: the reader's, then the too-long ones."""
    return [[b.where, b.reason] for b in [*report.bad, *(lengths.bad if lengths else [])]]


def report_markdown(report: DatasetReport, lengths: LengthReport | None = None,
                    split_sizes: tuple[int, int] | None = None) -> str:
    """The summary as Markdown: usable and bad rows, rows per format and kind, token lengths
    against the cutoff, the split when given, and what the reader left out or changed."""
    usable = len(lengths.examples) if lengths else len(report.examples)
    bad = len(report.bad) + (len(lengths.bad) if lengths else 0)
    lines = [f"**{html.escape(report.source, quote=False)}**: {usable} usable row{'s' * (usable != 1)}, "
             f"{bad} bad row{'s' * (bad != 1)}" + (f", {len(report.skipped)} left out" if report.skipped else "")]
    if report.formats:
        lines.append("- formats: " + ", ".join(f"{k} {v}" for k, v in report.formats.items()))
    if report.kinds:
        lines.append("- kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(report.kinds.items())))
    if lengths:
        over = len(lengths.bad)
        lines.append(f"- tokens per row: p50 {lengths.p50}, p95 {lengths.p95}, max {lengths.max}; cutoff "
                     f"{lengths.cutoff}" + (f" ({over} over it)" if over else ""))
    if split_sizes:
        lines.append(f"- split: {split_sizes[0]} train, {split_sizes[1]} eval")
    lines += [f"- {html.escape(note, quote=False)}" for note in report.notes]
    if bad:
        lines.append(f"\n{bad} bad row{'s are' if bad != 1 else ' is'} listed below; fix them, or train on the "
                     f"{usable} usable rows.")
    return "\n".join(lines)
