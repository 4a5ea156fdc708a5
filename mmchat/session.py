"""ChatSession: one conversation's history and attachments, driven against a backend.

The session validates uploads (via `mmchat.attachments`), encodes each image once with the
image encoder (cached by content hash; labels shown with the image, vectors kept for image
retrieval), builds the prompt (via `mmchat.prompt`), streams the answer from the backend it
was given, and records per-answer stats. It supports stop, regenerate, undo, clear, a system
prompt, and JSON export/import with images stored beside the JSON by content hash.

With a knowledge base given, each answer first retrieves for the latest question (toggle and
options in `session.rag`), keeps only sources relevant enough (the knowledge base's floor; for a
question about an attached photo, only when the question points at the documents or the match
is strong), gives the model as many sources as its preset allows, trimmed to their sentences
that best match the question (`mmchat.knowledge.passages`), puts them numbered into that turn
(`mmchat.prompt`), keeps the retrieval trace (with each source's supporting passage) on the
answer, and says so when documents are still being indexed or could not be used.

The answer follows the question's language where the model can (`mmchat.language`): a preset
that writes several languages gets a line asking for the question's language; a Chinese
question to a model that cannot write Chinese is answered with the supporting passages and a
note in Chinese instead of the model's words, streamed through the same loop.

It never holds model weights and never renders UI: the Gradio layer turns its state into
components, and `gradio_client`/tests can drive it directly.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmchat import language
from mmchat.attachments import Attachment, ingest_image, ingest_upload, load_attachment
from mmchat.backends.base import Backend, GenerationParams, PreparedPrompt
from mmchat.config import UploadLimits
from mmchat.errors import InvalidUpload, UserFacingError
from mmchat.knowledge.lexical import is_cjk, tokenize
from mmchat.knowledge.passages import best_passages
from mmchat.knowledge.retrieval import DOCUMENT_REFERENCE
from mmchat.prompt import Turn, fit_to_context, hit_sources, replace_last_user_text, with_context, with_instruction

log = logging.getLogger(__name__)

EXPORT_FORMAT = "mmchat.chat/1"
EXPORT_JSON = "chat.json"
EXPORT_IMAGES = "images"
MAX_IMPORT_BYTES = 200 * 1024 * 1024
# Shown under an answer: the sentences of each source that best match the question.
EVIDENCE_CHARS = 320


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
    # Why the knowledge base cannot be used for this answer (still opening, failed): said in
    # the answer's notes instead of answering without documents silently.
    unavailable: str = ""


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


# Words that refer to the attached photo itself: they do not make a question about documents.
PHOTO_WORDS = frozenset(
    "picture pictures image images photo photos photograph pic shown show see look looks here "
    "animal animals thing things object objects color colour kind type cup".split()
)


def question_terms(text: str) -> set[str]:
    """The question's own terms: no stop words, no words about the photo, CJK only as bigrams."""
    return {t for t in tokenize(text) if t not in PHOTO_WORDS and not (is_cjk(t) and len(t) < 2)}


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
        self, text: str, files: Sequence[Any] = (), params: GenerationParams | None = None,
        adapter: str | None = None,
    ) -> Iterator[str]:
        """Add a user message (text + uploads) and stream the answer, yielding its text so far.

        `adapter` names the LoRA adapter to answer with (None or "base": the bare base); the
        answer records it. Uploads are validated before anything is added, so a rejected file
        leaves the history untouched and the error names the file.
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
            yield from self._answer(params, adapter)
        except UserFacingError:
            # The prompt could not be built (e.g. too long): the message is not kept, so the
            # person can edit and resend it, and the history stays consistent.
            if self.history and self.history[-1] is user:
                self.history.pop()
            raise

    def regenerate(self, params: GenerationParams | None = None) -> Iterator[str]:
        """Drop the last answer and stream a new one for the same question, with its adapter."""
        adapter = None
        while self.history and self.history[-1].role != "user":
            removed = self.history.pop()
            if removed.role == "assistant":
                adapter = removed.adapter
        if not self.history:
            raise UserFacingError("there is no question to answer again; send a message first")
        yield from self._answer(params, adapter)

    def _answer(self, params: GenerationParams | None, adapter: str | None = None) -> Iterator[str]:
        params = params or self.params
        if not self._busy.acquire(blocking=False):
            raise UserFacingError("an answer is still streaming; stop it or wait for it to finish")
        self._stop = threading.Event()  # before preparing, so a stop pressed meanwhile counts
        try:
            self._check_adapter(adapter)
            retrieval = self._retrieve()
            question = next(m for m in reversed(self.history) if m.role == "user").text
            if language.unwritten_language(question, self.backend.info.languages):
                # A Chinese question to a model that cannot write Chinese: the supporting
                # passages and a note in Chinese, not the model's answer (`mmchat.language`).
                stream, adapter = language.fallback_stream(self.backend.info.preset, retrieval, self._stop), None
            else:
                stream, adapter = self._model_stream(retrieval, params, adapter, question)
            if retrieval is not None:
                # Shown between the question and the answer, so regenerate/undo remove them too.
                self.history.extend(ChatMessage("note", note) for note in retrieval.get("notes", []))
            answer = ChatMessage("assistant", "", retrieval=retrieval, adapter=adapter)
            self.history.append(answer)
            yield answer.text  # empty: lets the UI show the question at once, before prefill
            for delta in stream:
                answer.text += delta
                yield answer.text
            answer.stats = stream.stats.to_dict()
            if stream.stats.finish_reason == "cancelled":
                answer.stats["note"] = "stopped by the user"
            elif stream.stats.finish_reason == language.FINISH_REASON:
                answer.stats["note"] = language.TRACE_NOTE
            yield answer.text
        finally:
            self._busy.release()

    def _model_stream(
        self, retrieval: dict[str, Any] | None, params: GenerationParams, adapter: str | None, question: str
    ) -> tuple[Any, str | None]:
        """Fit the prompt (history, sources, the answer-language line) and start the model on it."""
        turns = [m.to_turn() for m in self.history]
        prepared: list[PreparedPrompt] = []  # holds only the latest candidate

        def count_tokens(messages: list, image_ids: list[str]) -> int:
            prepared[:] = [self.backend.prepare(messages, self._open_images(image_ids), adapter=adapter)]
            return prepared[0].prompt_tokens

        system = with_instruction(self.system_prompt, language.instruction(question, self.backend.info.languages))
        prompt, used = self._fit(turns, retrieval, count_tokens, params, system)
        if prompt.dropped_turns > self._reported_dropped:
            self._note_trim(prompt.dropped_turns)
        self._reported_dropped = prompt.dropped_turns
        if retrieval is not None:
            retrieval["used"] = used
        # fit_to_context returns right after counting the candidate it accepts: the last
        # prepared prompt is the one to generate from.
        return self.backend.stream(prepared[0], params, self._stop), prepared[0].adapter

    def _check_adapter(self, adapter: str | None) -> None:
        """Refuse an adapter the backend cannot use before anything is retrieved or prepared."""
        from mmchat.adapters.host import adapter_name

        if adapter_name(adapter) is None:
            return
        if not self.backend.info.supports_adapters:
            raise UserFacingError(f"the {self.backend.info.preset} model takes no LoRA adapters; answer with 'base'")
        self.backend.adapters.check(adapter)

    def _retrieve(self) -> dict[str, Any] | None:
        """The retrieval trace for the latest question, or None when RAG is off."""
        if not self.rag.enabled:
            return None
        question = next(m for m in reversed(self.history) if m.role == "user")
        if self.knowledge is None:
            if not self.rag.unavailable:
                return None
            return {"query": question.text, "hits": [], "images": [], "timings_ms": {},
                    "notes": [f"{self.rag.unavailable}; this answer does not use the documents."]}
        vectors = [self.images[i].vector for i in question.image_ids if self.images[i].vector is not None]
        try:
            result = self.knowledge.search(
                # A small model is given fewer sources (its preset's `answer.max_sources`).
                question.text, top_k=min(self.rag.top_k, self.backend.info.answer.max_sources),
                doc_ids=list(self.rag.doc_ids),
                whole_document=self.rag.whole_document, image_vectors=vectors,
            )
        except Exception as err:  # e.g. the Chroma server went away: answer without it, say so
            log.exception("retrieval failed")
            return {"query": question.text, "hits": [], "images": [], "timings_ms": {},
                    "notes": [f"Retrieval failed ({err.__class__.__name__}: {err}); this answer "
                              "does not use the knowledge base."]}
        if question.image_ids and result.hits and result.mode != "whole document":
            left_out = self._gate_image_question(question.text, result)
            if left_out:  # like the retriever's relevance remarks: for the sources panel
                result.info.append(left_out)
        trace = result.to_trace()
        # Evidence shown under the answer; with the preset trimming sources, what the model gets.
        trim = self.backend.info.answer.source_chars if trace.get("mode") != "whole document" else 0
        budgets = [EVIDENCE_CHARS, trim] if trim else [EVIDENCE_CHARS]
        for hit in trace["hits"]:
            passages = best_passages(question.text, hit["text"], budgets)
            hit["evidence"] = passages[0]
            if trim:
                hit["passage"] = passages[1]
        if self.rag.images_to_model:
            trace["context_images"] = []
            for hit in result.images:
                try:
                    trace["context_images"].append(self.attach(hit.image_path).attachment.sha256)
                except UserFacingError as err:  # a stored copy gone missing: answer without it
                    log.warning("retrieved image %s not usable: %s", hit.file_name, err)
        return trace

    def _gate_image_question(self, text: str, result: Any) -> str | None:
        """A question about the attached photo uses documents only when asked to or on a strong match.

        "What animal is this?" next to a cat photo shares a word with any document about
        images, and its sources would only distract the model from the photo. A strong match
        names at least two of the question's own terms (not words about the photo itself) that
        one source contains, with a relevance of at least `image_question_min_relevance`.
        Returns why the documents were left out (for the sources panel), or None.
        """
        if DOCUMENT_REFERENCE.search(text) or any(
            h.file_name and Path(h.file_name).stem.lower() in text.lower() for h in result.hits
        ):
            return None
        strong = self.knowledge.config.image_question_min_relevance
        terms = question_terms(text)
        best_relevance, best_shared = 0.0, 0
        for hit in result.hits:
            shared = len(terms & set(tokenize(hit.text)))
            relevance = hit.relevance or 0.0
            best_relevance = max(best_relevance, relevance)
            if shared >= 2 and relevance >= strong:
                return None
            best_shared = max(best_shared, shared)
        result.hits = []
        return (
            f"The question is about the attached image, so documents were not used (best match: "
            f"relevance {best_relevance:.2f}, {best_shared} shared term(s); needs 2 terms and {strong:.2f}). "
            "Mention the documents to use them."
        )

    def _fit(self, turns: list[Turn], retrieval: dict[str, Any] | None, count_tokens: Any, params: GenerationParams,
             system_prompt: str):
        """Fit history + retrieved sources into the context, dropping the weakest sources first."""
        hits = (retrieval or {}).get("hits", [])
        images = (retrieval or {}).get("context_images", [])
        question = next(t for t in reversed(turns) if t.role == "user").text
        for used in range(len(hits), -1, -1):
            sources = hit_sources(hits[:used])
            candidate = replace_last_user_text(turns, with_context(question, sources), images)
            try:
                prompt = fit_to_context(
                    system_prompt, candidate, count_tokens,
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

    def export_download(self, folder: Path) -> Path:
        """The export as a zip in `folder` (the browser session's own), for download.

        The file name carries a random token (`secrets`), so its URL cannot be guessed from a
        time or an address; exports under `folder`'s parent older than `EXPORT_MAX_AGE_S` are
        purged first (the UI also removes the session's folder when the session ends).
        """
        folder = Path(folder)
        purge_exports(folder.parent)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self.export_zip(folder / f"mmchat-chat-{stamp}-{secrets.token_urlsafe(12)}.zip")

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
        # Everything is checked before anything is replaced: a bad field leaves the chat as it was.
        history, entries, system_prompt = _validated_export(payload, source.name)
        for sha, entry in entries.items():
            attachment = ingest_upload(
                read_image(entry["file"]), store_dir=self.store_dir, limits=self.limits,
                original_name=entry.get("name") or entry["file"],
            )
            if attachment.sha256 != sha:
                raise InvalidUpload(f"{source.name}: image {entry['file']!r} does not match its hash")
            if sha not in self.images:
                self._encode(attachment)
        self.history = history
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self._reported_dropped = 0

    @staticmethod
    def _parse_export(data: bytes, name: str) -> dict[str, Any]:
        try:
            payload = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise InvalidUpload(f"{name}: not valid JSON ({err.__class__.__name__}: {err})") from None
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


# ----- export files on disk and import validation ------------------------------------------
EXPORT_MAX_AGE_S = 3600  # exports (and gradio's cached copies) older than this are deleted
SHA256 = re.compile(r"[0-9a-f]{64}")
ROLES = ("user", "assistant", "note")
TRACE_MODES = ("hybrid", "whole document")
HIT_TEXT_KEYS = ("evidence", "passage")  # added to hits by the session (best sentences)


def purge_exports(root: Path, max_age_s: float = EXPORT_MAX_AGE_S, now: float | None = None) -> int:
    """Delete exports under `root` older than `max_age_s` (and folders left empty); returns files removed."""
    root = Path(root)
    cutoff = (time.time() if now is None else now) - max_age_s
    removed = 0
    emptied: set[Path] = set()
    if not root.is_dir():
        return 0
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_symlink() or path.is_file():
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
                    emptied.add(path.parent)
            elif path.is_dir() and (path in emptied or path.stat().st_mtime < cutoff) and not any(path.iterdir()):
                path.rmdir()
                emptied.add(path.parent)
        except OSError:  # another session removed it meanwhile
            continue
    return removed


def _scalar_schema(cls: type, drop: Sequence[str] = ()) -> dict[str, tuple[tuple[type, ...], bool]]:
    """`{field: (accepted types, None allowed)}` for a dataclass's scalar fields, read from its annotations."""
    import dataclasses

    schema: dict[str, tuple[tuple[type, ...], bool]] = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if f.name in drop:
            continue
        if "float" in kind:
            schema[f.name] = ((int, float), "None" in kind)
        elif "int" in kind:
            schema[f.name] = ((int,), "None" in kind)
        elif "str" in kind:
            schema[f.name] = ((str,), "None" in kind)
        elif "bool" in kind:
            schema[f.name] = ((bool,), "None" in kind)
    return schema


def _check_scalars(
    data: Any, schema: dict[str, tuple[tuple[type, ...], bool]], where: str, *, required: Sequence[str] = (),
) -> dict[str, Any]:
    """The whitelisted keys of `data`, each of its declared type (unknown keys are dropped)."""
    if not isinstance(data, dict):
        raise InvalidUpload(f"{where} must be an object, got {type(data).__name__}")
    kept: dict[str, Any] = {}
    for key in required:
        if key not in data:
            raise InvalidUpload(f"{where} lacks {key!r}")
    for key, (types, nullable) in schema.items():
        if key not in data:
            continue
        value = data[key]
        if value is None and nullable:
            kept[key] = None
            continue
        number = types != (str,) and types != (bool,)
        if not isinstance(value, types) or (number and isinstance(value, bool)) or (
            isinstance(value, float) and value != value
        ):
            accepted = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
            raise InvalidUpload(f"{where}.{key} is {value!r}; accepted: {accepted}")
        kept[key] = value
    return kept


def _sanitized_trace(trace: Any, where: str, image_ids: set[str]) -> dict[str, Any] | None:
    """A retrieval trace as stored on an answer: ids, scores and text; never a path."""
    from mmchat.knowledge.retrieval import Hit

    if trace is None:
        return None
    hit_schema = _scalar_schema(Hit, drop=("image_path",))
    hit_schema.update({k: ((str,), True) for k in HIT_TEXT_KEYS})
    top = _check_scalars(trace, {"query": ((str,), False), "mode": ((str,), False), "used": ((int,), False)}, where)
    if top.get("mode", "hybrid") not in TRACE_MODES:
        raise InvalidUpload(f"{where}.mode is {top['mode']!r}; accepted: {', '.join(TRACE_MODES)}")
    for key in ("hits", "images"):
        items = trace.get(key, [])
        if not isinstance(items, list):
            raise InvalidUpload(f"{where}.{key} must be a list, got {type(items).__name__}")
        top[key] = [_check_scalars(h, hit_schema, f"{where}.{key}[{n}]", required=("file_name",))
                    for n, h in enumerate(items)]
    timings = trace.get("timings_ms", {})
    top["timings_ms"] = _check_scalars(timings, {k: ((int, float), False) for k in timings} if isinstance(timings, dict) else {},
                                       f"{where}.timings_ms")
    for key in ("notes", "info"):  # info: what the sources panel says about relevance
        lines = trace.get(key, [])
        if not isinstance(lines, list) or not all(isinstance(n, str) for n in lines):
            raise InvalidUpload(f"{where}.{key} must be a list of strings")
        top[key] = list(lines)
    if "context_images" in trace:
        context = trace["context_images"]
        if not isinstance(context, list) or not all(isinstance(i, str) for i in context):
            raise InvalidUpload(f"{where}.context_images must be a list of image ids")
        top["context_images"] = [i for i in context if i in image_ids]
    return top


def _validated_export(payload: dict[str, Any], name: str) -> tuple[list[ChatMessage], dict[str, dict[str, str]], str | None]:
    """Messages, image entries and system prompt of an export, every field type-checked.

    Refuses (naming the field, the bad value and what is accepted) rather than repairing,
    except for unknown keys, which are dropped; retrieval traces keep only ids, scores and text.
    """
    from mmchat.backends.base import GenerationStats

    images = payload.get("images", {})
    if not isinstance(images, dict):
        raise InvalidUpload(f"{name}: 'images' must be an object of sha256 -> entry")
    entries: dict[str, dict[str, str]] = {}
    for sha, entry in images.items():
        if not SHA256.fullmatch(str(sha)):
            raise InvalidUpload(f"{name}: image id {str(sha)[:80]!r} is not a sha256 (64 lower-case hex digits)")
        checked = _check_scalars(entry, {"file": ((str,), False), "name": ((str,), True)}, f"{name}: images[{sha[:12]}]",
                                 required=("file",))
        entries[sha] = {"file": checked["file"], "name": checked.get("name") or ""}
    system_prompt = payload.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InvalidUpload(f"{name}: system_prompt is {system_prompt!r}; accepted: a string")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise InvalidUpload(f"{name}: 'messages' must be a list of messages")
    stats_schema = _scalar_schema(GenerationStats, drop=("started_at",))
    stats_schema.update({"tokens_per_s": ((int, float), False), "note": ((str,), False)})
    message_schema = {"role": ((str,), False), "text": ((str,), False), "adapter": ((str,), True),
                      "created": ((int, float), False)}
    history: list[ChatMessage] = []
    for n, raw in enumerate(messages):
        where = f"{name}: messages[{n}]"
        fields = _check_scalars(raw, message_schema, where, required=("role", "text"))
        if fields["role"] not in ROLES:
            raise InvalidUpload(f"{where}.role is {fields['role']!r}; accepted: {', '.join(ROLES)}")
        image_ids = raw.get("image_ids", [])
        if not isinstance(image_ids, list) or not all(isinstance(i, str) for i in image_ids):
            raise InvalidUpload(f"{where}.image_ids must be a list of image ids")
        unknown = [i for i in image_ids if i not in entries]
        if unknown:
            raise InvalidUpload(f"{where} refers to image {unknown[0][:80]!r}, which the export lacks")
        stats = raw.get("stats")
        stats = None if stats is None else _check_scalars(stats, stats_schema, f"{where}.stats")
        retrieval = _sanitized_trace(raw.get("retrieval"), f"{where}.retrieval", set(entries))
        history.append(ChatMessage(image_ids=list(image_ids), retrieval=retrieval, stats=stats, **fields))
    return history, entries, system_prompt
