"""Runtime: the process-wide model and image encoder, loaded once, in the background.

The server starts answering at once while weights load in a worker thread; handlers call
`wait_ready()` and the status line reports progress or the load error. `new_session()` gives
each browser its own `ChatSession` over the shared backend. The knowledge base (RAG) opens
after the models, on the same worker, re-embeds its chunks if the configured text embedder
changed (the old one answers meanwhile), and indexes the demo corpus on first start; a knowledge
base that fails to open is reported in the status while chat keeps working without it; a
question asked meanwhile waits for it briefly (`knowledge_for_answer`) and otherwise learns
why it is not there, so the answer can say so. The LoRA adapters in the store that fit the
loaded base load right after the model (`adapters`, an `AdapterRegistry`); a broken store is
reported and chat works with the bare base. This module imports no torch
at import time (loading happens inside the worker), so the UI can import it freely.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mmchat.config import AppConfig
from mmchat.errors import ModelUnavailable, UserFacingError

log = logging.getLogger(__name__)

# How long a question waits for the knowledge base to open before answering without it (and
# saying so); opening takes a few seconds, indexing the demo corpus continues afterwards.
KNOWLEDGE_WAIT_S = 20.0


class Runtime:
    def __init__(
        self, config: AppConfig, backend: Any = None, encoder: Any = None, knowledge: Any = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.encoder = encoder
        self.knowledge = knowledge
        self.knowledge_error: BaseException | None = None
        self.knowledge_phase = "ready" if knowledge is not None else "not started"
        self._knowledge_done = threading.Event()
        self._knowledge_preparing = False  # True from open until re-embedding and the demo corpus are done
        if knowledge is not None or not config.knowledge.enabled:
            self._knowledge_done.set()
        self.adapters: Any = None  # mmchat.adapters.registry.AdapterRegistry once the model is loaded
        self.adapters_error: BaseException | None = None
        self.error: BaseException | None = None
        self.phase = "ready" if backend is not None else "not started"
        self.started_at = time.time()
        self.load_seconds = 0.0
        self._ready = threading.Event()
        if backend is not None:
            self._ready.set()
        self.data_dir = config.resolved_data_dir()
        self.upload_dir = self.data_dir / "uploads"
        self.export_dir = self.data_dir / "exports"
        for directory in (self.upload_dir, self.export_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if backend is not None:  # given, not loaded here (tests, scripts): its adapters load now
            self._load_adapters()

    def start(self) -> "Runtime":
        """Load in the background (returns at once)."""
        if not self._ready.is_set() and self.phase == "not started":
            self.phase = "starting"
            threading.Thread(target=self._load, name="mmchat-load", daemon=True).start()
        elif not self._knowledge_done.is_set() and self.knowledge_phase == "not started":
            self.knowledge_phase = "starting"
            threading.Thread(target=self._open_knowledge, name="mmchat-knowledge", daemon=True).start()
        return self

    def load(self) -> "Runtime":
        """Load in the foreground (scripts): models, then the knowledge base and its demo corpus."""
        if not self._ready.is_set():
            self._load()
        if self.error:
            raise self.error
        return self

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from mmchat.backends.registry import load_backend
            from mmchat.vision import load_image_encoder

            if self.backend is None:
                self.phase = "loading the language model"
                self.backend = load_backend(self.config.model)
            if self.encoder is None:
                self.phase = "loading the image encoder"
                self.encoder = load_image_encoder(self.config.encoder, cache_dir=self.config.cache_dir())
            self.phase = "loading adapters"
            self._load_adapters()
            self.phase = "ready"
        except BaseException as err:  # reported in the UI; the server keeps serving
            log.exception("model load failed")
            self.error = err
            self.phase = "failed"
        finally:
            self.load_seconds = time.perf_counter() - started
            self._ready.set()
        if not self._knowledge_done.is_set():
            self._open_knowledge()

    def _load_adapters(self) -> None:
        """Load the adapters of both stores that fit the base: the shipped ones (read-only, in the
        project) and the user's (uploaded or trained, under the data dir, so nothing is written
        into the source tree). A broken store is reported, chat goes on."""
        if not self.config.adapters.enabled:
            return
        try:
            from mmchat.adapters.registry import AdapterRegistry
            from mmchat.adapters.store import AdapterStore

            shipped_dir, user_dir = self.config.adapters.resolved_path(), self.config.user_adapters_dir()
            if shipped_dir.resolve() == user_dir.resolve():  # configured as one folder: it is the user's
                shipped = user = AdapterStore(user_dir)
            else:
                shipped = AdapterStore(shipped_dir, read_only=True)
                user = AdapterStore(user_dir, shipped=shipped)
            self.adapters = AdapterRegistry(shipped, self.backend, user_store=user).sync()
        except Exception as err:
            log.exception("adapter store failed")
            self.adapters_error = err

    def _open_knowledge(self) -> None:
        """Open the knowledge base, then index the demo corpus once (chat is usable meanwhile)."""
        try:
            self._ready.wait()
            if self.error is not None:
                return
            from mmchat.config import PROJECT_DIR
            from mmchat.knowledge.base import KnowledgeBase

            self.knowledge_phase = "opening the knowledge base"
            knowledge = KnowledgeBase(self.config.knowledge, encoder=self.encoder)
            self.knowledge = knowledge
            self.knowledge_phase = "ready"
            self._knowledge_preparing = True  # re-embedding and the demo corpus follow: not settled yet
            self._knowledge_done.set()
            if knowledge.embedder_pending:  # the configured embedder changed: the old one serves meanwhile
                knowledge.switch_embedder()
            if self.config.knowledge.seed_demo:
                knowledge.seed_demo(PROJECT_DIR / "knowledge")
        except BaseException as err:  # reported in the status; chat works without RAG
            log.exception("knowledge base failed")
            self.knowledge_error = err
            self.knowledge_phase = "failed"
        finally:
            self._knowledge_preparing = False
            self._knowledge_done.set()

    def knowledge_settled(self) -> bool:
        """True once the knowledge base is open (or failed or off) and nothing is indexing."""
        if not self._knowledge_done.is_set():
            return False
        if self.knowledge is None:
            return True
        if self._knowledge_preparing:
            return False
        job = self.knowledge.reembedding
        return self.knowledge.busy_note() is None and not (job is not None and job.running)

    def wait_knowledge(self, timeout: float | None = None) -> Any:
        """The knowledge base once open (None if disabled or failed); raises while opening."""
        if not self._knowledge_done.wait(timeout):
            raise UserFacingError(f"the knowledge base is still opening ({self.knowledge_phase}); try again shortly")
        if self.knowledge is None and self.knowledge_error is not None:
            raise UserFacingError(f"the knowledge base is unavailable: {self.knowledge_error}")
        if self.knowledge is None:
            raise UserFacingError("the knowledge base is switched off ([knowledge] enabled = false)")
        return self.knowledge

    def knowledge_for_answer(self, timeout: float = KNOWLEDGE_WAIT_S) -> tuple[Any, str]:
        """`(knowledge base, "")` for an answer, waiting up to `timeout` s while it opens.

        Otherwise `(None, why)`, so the answer can say plainly that it did not use the documents.
        """
        if not self.config.knowledge.enabled:
            return None, ""
        if not self._knowledge_done.wait(timeout):
            return None, f"The knowledge base is still opening ({self.knowledge_phase})"
        if self.knowledge is None:
            reason = self.knowledge_error or self.error or "it did not open"
            return None, f"The knowledge base is unavailable ({reason})"
        return self.knowledge, ""

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.error is None

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """True once loading has ended, successfully or not."""
        return self._ready.wait(timeout)

    def wait_ready(self, timeout: float | None = None) -> None:
        if not self._ready.wait(timeout):
            raise UserFacingError(f"the model is still loading ({self.phase}); try again in a moment")
        if self.error is not None:
            if isinstance(self.error, UserFacingError):
                raise self.error
            raise ModelUnavailable(f"the model failed to load: {self.error}")

    def new_session(self) -> Any:
        from mmchat.backends.base import GenerationParams
        from mmchat.session import ChatSession, RagOptions

        self.wait_ready()
        gen = self.config.generation
        return ChatSession(
            backend=self.backend,
            encoder=self.encoder,
            store_dir=self.upload_dir,
            limits=self.config.limits,
            system_prompt=gen.system_prompt,
            params=GenerationParams.for_policy(
                self.backend.info.answer, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                top_p=gen.top_p,
            ),
            top_labels=self.config.encoder.top_labels,
            knowledge=self.knowledge,
            rag=RagOptions(enabled=self.knowledge is not None, top_k=self.config.knowledge.top_k),
        )

    def sync_adapters(self) -> None:
        """Bring the registry in line with the stores when they changed (a run published an
        adapter in its own process); cheap when nothing changed: one listing per store."""
        registry = self.adapters
        if registry is None:
            return
        stores = [registry.store, getattr(registry, "user_store", None)]
        marker = tuple(sorted((str(s.root), p.name, p.stat().st_mtime_ns) for s in stores if s is not None
                              for p in s.root.iterdir() if not p.name.startswith(".")))
        if marker != getattr(self, "_adapters_marker", None):
            registry.sync()
            self._adapters_marker = marker

