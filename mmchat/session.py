"""ChatSession: one conversation's history and attachments, driven against a backend.

The session validates uploads (via `mmchat.attachments`), encodes each image once with the
image encoder (cached by content hash; labels shown with the image, vectors kept for image
retrieval), builds the prompt (via `mmchat.prompt`), streams the answer from the backend it
was given, and records per-answer stats. It supports stop, regenerate, undo, clear, a system
prompt, and JSON export/import with images stored beside the JSON by content hash.

With a knowledge base given, each answer first retrieves for the latest question (toggle and
options in `session.rag`), puts the numbered sources into that turn (`mmchat.prompt`), keeps
the retrieval trace on the answer, and says so when documents are still being indexed.

It never holds model weights and never renders UI: the Gradio layer turns its state into
components, and `gradio_client`/tests can drive it directly.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmchat.attachments import Attachment, ingest_image, ingest_upload, load_attachment
from mmchat.backends.base import Backend, GenerationParams, PreparedPrompt
from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload, UserFacingError
from mmchat.prompt import Source, Turn, fit_to_context, replace_last_user_text, with_context

log = logging.getLogger(__name__)

EXPORT_FORMAT = "mmchat.chat/1"
EXPORT_JSON = "chat.json"
EXPORT_IMAGES = "images"
MAX_IMPORT_BYTES = 200 * 1024 * 1024


@dataclass
class ImageInfo:
    """An encoded attachment: labels shown with the image, the vector kept for retrieval."""

    attachment: Attachment
    labels: list[tuple[str, float]]
    vector: Any = field(default=None, repr=False)  # numpy array from the image encoder


@dataclass
class RagOptions:
    """Per-conversation retrieval settings."""

    enabled: bool = True
    top_k: int = 4
    doc_ids: tuple[str, ...] = ()  # restrict retrieval to these documents (empty: all)
    whole_document: bool = False  # send the chosen short documents whole instead of chunks
    images_to_model: bool = False  # also pass retrieved images to the vision model


@dataclass
class ChatMessage:
    role: str  # "user", "assistant", or "note" (shown to the person, never sent to the model)
    text: str
    image_ids: list[str] = field(default_factory=list)
    adapter: str | None = None  # which LoRA adapter answered (None: the base model)
    retrieval: dict[str, Any] | None = None  # retrieval trace, once RAG is on
    stats: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)

    def to_turn(self) -> Turn:
        return Turn(self.role, self.text, tuple(self.image_ids))


class ChatSession:
    def __init__(
        self,
        backend: Backend,
        encoder: Any | None,
        store_dir: Path,
        limits: UploadLimits | None = None,
        system_prompt: str = "",
        params: GenerationParams | None = None,
        top_labels: int = 3,
        knowledge: Any | None = None,
        rag: RagOptions | None = None,
    ) -> None:
        self.backend = backend
        self.encoder = encoder
        self.store_dir = Path(store_dir)
        self.limits = limits or UploadLimits()
        self.system_prompt = system_prompt
        self.params = params or GenerationParams()
        self.top_labels = top_labels
        self.knowledge = knowledge
        self.rag = rag or RagOptions()
        self.history: list[ChatMessage] = []
        self.images: dict[str, ImageInfo] = {}
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._reported_dropped = 0  # exchanges already announced as trimmed

    # ----- attachments -------------------------------------------------------------------
    def attach(self, source: str | Path | bytes | Any, name: str | None = None) -> ImageInfo:
        """Validate an upload (a path, bytes or a PIL image) and encode it once."""
        if hasattr(source, "save") and hasattr(source, "size"):  # a PIL image
            attachment = ingest_image(source, store_dir=self.store_dir, limits=self.limits, name=name or "image.png")
        else:
            attachment = ingest_upload(source, store_dir=self.store_dir, limits=self.limits, original_name=name)
        return self._encode(attachment)

    def _encode(self, attachment: Attachment) -> ImageInfo:
        cached = self.images.get(attachment.sha256)
        if cached is not None:
            return cached
        labels: list[tuple[str, float]] = []
        vector = None
        if self.encoder is not None:
            image = attachment.open_image()
            vector = self.encoder.encode_images([image])[0]
            labels = [(str(l), float(p)) for l, p in self.encoder.describe(image, top_k=self.top_labels)]
        info = ImageInfo(attachment, labels, vector)
        self.images[attachment.sha256] = info
        return info

    # ----- chatting ----------------------------------------------------------------------
    def send(
        self, text: str, files: Sequence[Any] = (), params: GenerationParams | None = None
    ) -> Iterator[str]:
        """Add a user message (text + uploads) and stream the answer, yielding its text so far.

        Uploads are validated before anything is added, so a rejected file leaves the history
        untouched and the error names the file.
        """
        text = (text or "").strip()
        if len(text) > self.limits.max_prompt_chars:
            raise UserFacingError(
                f"the message is {len(text)} characters; the limit is {self.limits.max_prompt_chars}"
            )
        if len(files) > self.limits.max_images_per_message:
            raise InvalidUpload(
                f"{len(files)} images attached; at most {self.limits.max_images_per_message} per message"
            )
        infos = [self.attach(f) for f in files]
        if not text and not infos:
            raise UserFacingError("the message is empty; type a question or attach an image")
        user = ChatMessage("user", text or "Describe this image.", [i.attachment.sha256 for i in infos])
        self.history.append(user)
        try:
            yield from self._answer(params)
        except UserFacingError:
            # The prompt could not be built (e.g. too long): the message is not kept, so the
            # person can edit and resend it, and the history stays consistent.
            if self.history and self.history[-1] is user:
                self.history.pop()
            raise

    def regenerate(self, params: GenerationParams | None = None) -> Iterator[str]:
        """Drop the last answer and stream a new one for the same question."""
        while self.history and self.history[-1].role != "user":
            self.history.pop()
        if not self.history:
            raise UserFacingError("there is no question to answer again; send a message first")
        yield from self._answer(params)

    def _answer(self, params: GenerationParams | None) -> Iterator[str]:
        params = params or self.params
        if not self._busy.acquire(blocking=False):
            raise UserFacingError("an answer is still streaming; stop it or wait for it to finish")
        self._stop = threading.Event()  # before preparing, so a stop pressed meanwhile counts
        try:
            retrieval = self._retrieve()
            turns = [m.to_turn() for m in self.history]
            prepared: list[PreparedPrompt] = []  # holds only the latest candidate

            def count_tokens(messages: list, image_ids: list[str]) -> int:
                prepared[:] = [self.backend.prepare(messages, self._open_images(image_ids))]
                return prepared[0].prompt_tokens

            prompt, used = self._fit(turns, retrieval, count_tokens, params)
            if prompt.dropped_turns > self._reported_dropped:
                self._note_trim(prompt.dropped_turns)
            self._reported_dropped = prompt.dropped_turns
            if retrieval is not None:
                retrieval["used"] = used
                # Shown between the question and the answer, so regenerate/undo remove them too.
                self.history.extend(ChatMessage("note", note) for note in retrieval.get("notes", []))
            answer = ChatMessage("assistant", "", retrieval=retrieval)
            # fit_to_context returns right after counting the candidate it accepts: the last
            # prepared prompt is the one to generate from.
            stream = self.backend.stream(prepared[0], params, self._stop)
            self.history.append(answer)
            yield answer.text  # empty: lets the UI show the question at once, before prefill
            for delta in stream:
                answer.text += delta
                yield answer.text
            answer.stats = stream.stats.to_dict()
            if stream.stats.finish_reason == "cancelled":
                answer.stats["note"] = "stopped by the user"
            yield answer.text
        finally:
            self._busy.release()

    def _retrieve(self) -> dict[str, Any] | None:
        """The retrieval trace for the latest question, or None when RAG is off or empty."""
        if self.knowledge is None or not self.rag.enabled:
            return None
        question = next(m for m in reversed(self.history) if m.role == "user")
        vectors = [self.images[i].vector for i in question.image_ids if self.images[i].vector is not None]
        try:
            result = self.knowledge.search(
                question.text, top_k=self.rag.top_k, doc_ids=list(self.rag.doc_ids),
                whole_document=self.rag.whole_document, image_vectors=vectors,
            )
        except Exception as err:  # e.g. the Chroma server went away: answer without it, say so
            log.exception("retrieval failed")
            return {"query": question.text, "hits": [], "images": [], "timings_ms": {},
                    "notes": [f"Retrieval failed ({err.__class__.__name__}: {err}); this answer "
                              "does not use the knowledge base."]}
        trace = result.to_trace()
        if self.rag.images_to_model:
            trace["context_images"] = []
            for hit in result.images:
                try:
                    trace["context_images"].append(self.attach(hit.image_path).attachment.sha256)
                except UserFacingError as err:  # a stored copy gone missing: answer without it
                    log.warning("retrieved image %s not usable: %s", hit.file_name, err)
        return trace

    def _fit(self, turns: list[Turn], retrieval: dict[str, Any] | None, count_tokens: Any, params: GenerationParams):
        """Fit history + retrieved sources into the context, dropping the weakest sources first."""
        hits = (retrieval or {}).get("hits", [])
        images = (retrieval or {}).get("context_images", [])
        question = next(t for t in reversed(turns) if t.role == "user").text
        for used in range(len(hits), -1, -1):
            sources = [
                Source(n, h["file_name"] + (f", p. {h['page']}" if h.get("page") else ""), h["text"])
                for n, h in enumerate(hits[:used], start=1)
            ]
            candidate = replace_last_user_text(turns, with_context(question, sources), images)
            try:
                prompt = fit_to_context(
                    self.system_prompt, candidate, count_tokens,
                    self.backend.info.context_length, params.max_new_tokens,
                )
            except UserFacingError:
                if used == 0:
                    raise
                continue
            if retrieval is not None and used < len(hits):
                retrieval.setdefault("notes", []).append(
                    f"Only {used} of {len(hits)} retrieved sources fit in the model's context."
                )
            return prompt, used
        raise AssertionError("unreachable")

    def _note_trim(self, dropped: int) -> None:
        note = (
            f"The conversation outgrew the model's {self.backend.info.context_length}-token context: "
            f"the oldest {dropped} message(s) are no longer sent to the model."
        )
        insert_at = len(self.history) - 1  # just before the question being answered
        self.history.insert(insert_at, ChatMessage("note", note))

    def _open_images(self, image_ids: Sequence[str]) -> list[Any]:
        return [self.images[i].attachment.open_image() for i in image_ids]

    def stop(self) -> None:
        """Ask the streaming answer to end at the next token; what it wrote is kept."""
        self._stop.set()

    def _refuse_while_streaming(self, action: str) -> None:
        if self._busy.locked():
            raise UserFacingError(f"cannot {action} while an answer is streaming; stop it first")

    def undo(self) -> str:
        """Remove the last exchange; returns the user's text so the UI can offer it again."""
        self._refuse_while_streaming("undo")
        while self.history and self.history[-1].role != "user":
            self.history.pop()
        if not self.history:
            return ""
        user = self.history.pop()
        while self.history and self.history[-1].role == "note":
            self.history.pop()
        return user.text

    def clear(self) -> None:
        self._refuse_while_streaming("clear the chat")
        self.history.clear()
        self._reported_dropped = 0

    @property
    def last_stats(self) -> dict[str, Any] | None:
        for message in reversed(self.history):
            if message.role == "assistant":
                return message.stats
        return None

    # ----- export / import ---------------------------------------------------------------
    def export(self, directory: Path) -> Path:
        """Write `chat.json` and `images/<sha256><ext>` into `directory`; returns the JSON path."""
        directory = Path(directory)
        (directory / EXPORT_IMAGES).mkdir(parents=True, exist_ok=True)
        used = {i for m in self.history for i in m.image_ids}
        images = {}
        for sha in sorted(used):
            info = self.images[sha]
            target = directory / EXPORT_IMAGES / info.attachment.path.name
            shutil.copyfile(info.attachment.path, target)
            images[sha] = {
                "file": f"{EXPORT_IMAGES}/{target.name}",
                "name": info.attachment.display_name,
                "labels": info.labels,
            }
        payload = {
            "format": EXPORT_FORMAT,
            "system_prompt": self.system_prompt,
            "model": self.backend.info.preset,
            "messages": [asdict(m) for m in self.history],
            "images": images,
        }
        path = directory / EXPORT_JSON
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
        return path

    def export_zip(self, zip_path: Path) -> Path:
        """The export as one zip file (what the UI offers for download)."""
        zip_path = Path(zip_path)
        staging = zip_path.with_suffix(".d")
        shutil.rmtree(staging, ignore_errors=True)
        self.export(staging)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(staging.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(staging).as_posix())
        shutil.rmtree(staging, ignore_errors=True)
        return zip_path

    def import_chat(self, source: Path) -> None:
        """Replace the conversation with an export (a `chat.json` path, its folder, or a zip).

        Every image is re-validated as an upload, so an edited export cannot smuggle in a file
        the upload path would refuse. On any error the current conversation is left as it was.
        """
        self._refuse_while_streaming("import a chat")
        source = Path(source)
        if source.is_dir():
            source = source / EXPORT_JSON
        if zipfile.is_zipfile(source):
            payload, read_image = self._open_zip_export(source)
        elif source.suffix.lower() == ".json" and source.is_file():
            payload = self._parse_export(source.read_bytes(), source.name)
            base = source.parent.resolve()

            def read_image(rel: str) -> bytes:
                path = (base / rel).resolve()
                if base not in path.parents:
                    raise InvalidUpload(f"{source.name}: image path {rel!r} points outside the export folder")
                return path.read_bytes()
        else:
            raise InvalidUpload(f"{source.name}: not a chat export; accepted: a .zip or chat.json exported by mmchat")
        images: dict[str, ImageInfo] = {}
        for sha, entry in payload.get("images", {}).items():
            attachment = ingest_upload(
                read_image(str(entry["file"])), store_dir=self.store_dir, limits=self.limits,
                original_name=str(entry.get("name") or entry["file"]),
            )
            if attachment.sha256 != sha:
                raise InvalidUpload(f"{source.name}: image {entry['file']!r} does not match its hash")
            images[sha] = self.images.get(sha) or self._encode(attachment)
        fields = {f for f in ChatMessage.__dataclass_fields__}
        try:
            history = [ChatMessage(**{k: v for k, v in m.items() if k in fields}) for m in payload["messages"]]
        except (TypeError, KeyError) as err:
            raise InvalidUpload(f"{source.name}: malformed message list ({err})") from None
        missing = {i for m in history for i in m.image_ids} - set(images)
        if missing:
            raise InvalidUpload(f"{source.name}: messages refer to {len(missing)} image(s) the export lacks")
        self.history = history
        self.system_prompt = str(payload.get("system_prompt", self.system_prompt))

    @staticmethod
    def _parse_export(data: bytes, name: str) -> dict[str, Any]:
        try:
            payload = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidUpload(f"{name}: not valid JSON ({err})") from None
        if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
            raise InvalidUpload(f"{name}: not an mmchat chat export (expected format {EXPORT_FORMAT!r})")
        return payload

    def _open_zip_export(self, source: Path):
        archive = zipfile.ZipFile(source)
        total = sum(info.file_size for info in archive.infolist())
        if total > MAX_IMPORT_BYTES:
            raise InvalidUpload(
                f"{source.name}: unpacks to {total / 1e6:.0f} MB; the limit is {MAX_IMPORT_BYTES / 1e6:.0f} MB"
            )
        names = set(archive.namelist())
        if EXPORT_JSON not in names:
            raise InvalidUpload(f"{source.name}: the zip has no {EXPORT_JSON}; accepted: a zip exported by mmchat")
        payload = self._parse_export(archive.read(EXPORT_JSON), source.name)

        def read_image(rel: str) -> bytes:
            if rel not in names or not rel.startswith(f"{EXPORT_IMAGES}/") or ".." in rel:
                raise InvalidUpload(f"{source.name}: image {rel!r} is missing from the zip")
            return archive.read(rel)

        return payload, read_image
