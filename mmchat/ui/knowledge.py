"""The Knowledge tab: add documents and images, watch them index, list, delete, reset, search.

`KnowledgeTab(runtime).build()` lays out the components and wires each event with an
`api_name` (`/knowledge_add`, `/knowledge_cancel`, `/knowledge_documents`, `/knowledge_delete`,
`/knowledge_reset`, `/knowledge_search`, `/knowledge_reembed`, `/knowledge_reembed_cancel`) so
`gradio_client` can drive it. Choosing another text embedder re-embeds every stored chunk with
a progress bar and its own Cancel (`KnowledgeBase.switch_embedder`); the current embedder
answers until that is complete. Indexing shows a
progress bar (on the result line only) and can be cancelled (Cancel is active only while
indexing runs); a bad file is named in the result and the others are still indexed; the upload
box empties once its files are dealt with, so adding one more later sends only that one. The
search box tries retrieval without the LLM. Imports no torch: the knowledge base lives in
`Runtime`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import gradio as gr

from mmchat.errors import UserFacingError
from mmchat.runtime import Runtime
from mmchat.ui.i18n import t, ui
from mmchat.ui.messages import localize
from mmchat.ui.render import document_headers, documents_rows, image_gallery, retrieval_markdown, table_value
from mmchat.ui.style import knowledge_status, reembedding_line
from mmchat.ui.tabs import AppTabs, Tab, upload_path

log = logging.getLogger(__name__)

UPLOAD_TYPES = [".pdf", ".docx", ".md", ".markdown", ".html", ".htm", ".txt", ".png", ".jpg", ".jpeg", ".webp"]


def document_choices(runtime: Runtime) -> list[tuple[str, str]]:
    knowledge = runtime.knowledge
    if knowledge is None:
        return []
    return [(f"{r.file_name} ({r.doc_id[:8]})", r.doc_id) for r in knowledge.documents()]


def embedder_choices() -> list[tuple[str, str]]:
    """The bundled text embedders, worded in the visitor's language."""
    from mmchat.knowledge.embeddings import E5_EMBEDDER, OFFLINE_TEXT_EMBEDDER, USE_EMBEDDER

    return [(t("knowledge.embedder.use"), USE_EMBEDDER), (t("knowledge.embedder.e5"), E5_EMBEDDER),
            (t("knowledge.embedder.minilm"), OFFLINE_TEXT_EMBEDDER)]


def current_embedder(knowledge: Any) -> str | None:
    """The source of the embedder that serves the chunks (None when it is not a bundled one)."""
    from mmchat.knowledge.embeddings import source_for_name

    if knowledge is None:
        return None
    return knowledge.text_source or source_for_name(knowledge.text_embedder.model_name) or None


def reembed_progress(knowledge: Any) -> str:
    """How far the running re-embedding is, in the visitor's language."""
    job = knowledge.reembedding
    return t("knowledge.reembed_progress", done=f"{job.done:,}", total=f"{job.total:,}")


class KnowledgeTab(Tab):
    """The Knowledge tab (only when the knowledge base is on); its listing refreshes on load and on select."""

    title, tab_id = "tab.knowledge", "knowledge"

    @property
    def enabled(self) -> bool:
        return self.runtime.config.knowledge.enabled

    def build(self) -> None:
        runtime = self.runtime
        cancels: dict[str, threading.Event] = {}

        status = gr.Markdown(knowledge_status(runtime), elem_id="mmchat-knowledge-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                files = gr.File(
                    label=ui("knowledge.files"),
                    file_count="multiple", file_types=UPLOAD_TYPES, elem_id="mmchat-knowledge-files",
                )
                with gr.Row():
                    add_btn = gr.Button(ui("knowledge.index"), variant="primary", elem_id="mmchat-knowledge-index")
                    # Cancel looks active only while indexing runs (switched by the events below).
                    cancel_btn = gr.Button(ui("shared.cancel"), variant="secondary", interactive=False,
                                           elem_id="mmchat-knowledge-cancel")
                result = gr.Markdown(elem_id="mmchat-knowledge-result")
                # No wrapping: each column as wide as its content, the table scrolls sideways on a phone.
                table = gr.Dataframe(headers=document_headers(), interactive=False, label=ui("knowledge.documents"), wrap=False,
                                     pinned_columns=1, max_height=360, elem_id="mmchat-knowledge-documents")
                with gr.Row():
                    delete_choice = gr.Dropdown(label=ui("knowledge.document"), choices=[], scale=3)
                    delete_btn = gr.Button(ui("shared.delete"), scale=1, elem_id="mmchat-knowledge-delete")
                with gr.Row():
                    confirm = gr.Checkbox(label=ui("knowledge.confirm_reset"), value=False)
                    reset_btn = gr.Button(ui("knowledge.reset"), variant="stop", size="sm")
                with gr.Row(equal_height=True):
                    embedder = gr.Dropdown(label=ui("knowledge.embedder"), info=ui("knowledge.embedder_info"),
                                           choices=embedder_choices(), scale=3, elem_id="mmchat-knowledge-embedder")
                    with gr.Column(scale=1, min_width=160):
                        reembed_btn = gr.Button(ui("knowledge.reembed"), size="sm", elem_id="mmchat-knowledge-reembed")
                        # Active only while a re-embedding runs (switched by the events below).
                        reembed_cancel_btn = gr.Button(ui("knowledge.reembed_cancel"), size="sm", interactive=False,
                                                       elem_id="mmchat-knowledge-reembed-cancel")
            with gr.Column(scale=3):  # as wide as the documents side: the excerpts need the room
                query = gr.Textbox(label=ui("knowledge.query"), placeholder=ui("knowledge.query_placeholder"),
                                   elem_id="mmchat-knowledge-query")
                with gr.Row():
                    top_k = gr.Slider(1, 20, value=runtime.config.knowledge.top_k, step=1, label=ui("knowledge.top_k"), min_width=200)
                    search_docs = gr.Dropdown(label=ui("knowledge.only_these"), choices=[], multiselect=True, min_width=200)
                search_btn = gr.Button(ui("knowledge.search"), elem_id="mmchat-knowledge-search")
                hits = gr.Markdown(elem_id="mmchat-knowledge-hits", elem_classes="mmchat-hits")
                gallery = gr.Gallery(label=ui("knowledge.images"), columns=3, height=220, object_fit="contain",
                                     elem_id="mmchat-knowledge-gallery")

        def listing():
            choices = document_choices(runtime)
            rows = documents_rows(runtime.knowledge.documents()) if runtime.knowledge is not None else []
            return (
                table_value(rows, document_headers()),  # headers in the visitor's language
                gr.Dropdown(choices=choices, value=None),
                gr.Dropdown(choices=choices),
                knowledge_status(runtime),
                gr.Dropdown(choices=embedder_choices(), value=current_embedder(runtime.knowledge)),
            )

        def add(uploads: list | None, request: gr.Request, progress=gr.Progress()):
            try:
                knowledge = runtime.wait_knowledge(timeout=120)
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return (localize(str(err)), *listing(), gr.update())
            paths = [upload_path(u) for u in uploads or [] if upload_path(u)]
            if not paths:
                gr.Warning(t("knowledge.choose_files"))
                return (t("knowledge.nothing_to_index"), *listing(), gr.update())
            cancel = cancels.setdefault(request.session_hash or "", threading.Event())
            cancel.clear()
            progress(0.0, desc=t("knowledge.starting"))
            report = knowledge.ingest(paths, progress=lambda f, m: progress(f, desc=localize(m)), cancel=cancel)
            for name, message in report.failed:
                gr.Warning(localize(message if message.startswith(name) else f"{name}: {message}"))
            # Every file was dealt with (indexed, already there or refused and named): empty the
            # upload box so adding one more later does not send these again. Kept after a cancel.
            return (localize(report.summary()), *listing(), gr.update() if report.cancelled else None)

        def cancel_ingest(request: gr.Request) -> None:
            event = cancels.get(request.session_hash or "")
            if event is not None:
                event.set()

        def delete(doc_id: str | None):
            try:
                knowledge = runtime.wait_knowledge(timeout=0)
                if not doc_id:
                    raise UserFacingError(t("knowledge.choose_document"))
                record = knowledge.delete(doc_id)
                message = t("knowledge.deleted", name=record.file_name, chunks=record.chunks)
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                message = localize(str(err))
            return (message, *listing())

        def reset(confirmed: bool):
            try:
                knowledge = runtime.wait_knowledge(timeout=0)
                if not confirmed:
                    raise UserFacingError(t("knowledge.tick_reset"))
                knowledge.reset()
                message = t("knowledge.empty")
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                message = localize(str(err))
            return (message, *listing(), gr.Checkbox(value=False))

        def search(text: str, k: float, doc_ids: list[str] | None):
            try:
                knowledge = runtime.wait_knowledge(timeout=0)
                if not (text or "").strip():
                    raise UserFacingError(t("knowledge.type_question"))
                # The whole ranking, marked against the floor: this box shows how retrieval sees a
                # question, a chat answer then uses only the hits at or above the floor.
                found = knowledge.search(text.strip(), top_k=int(k), doc_ids=doc_ids or None, min_relevance=0)
                floor = knowledge.config.min_relevance
                below = [n for n, h in enumerate(found.hits, start=1) if h.relevance is not None and h.relevance < floor]
                if below:
                    found.info.append(t("knowledge.below_floor", floor=f"{floor:.2f}",
                                        numbers=", ".join(f"[{n}]" for n in below)))
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return localize(str(err)), []
            trace = found.to_trace()
            return retrieval_markdown(trace, numbered_only=False), image_gallery(trace["images"], knowledge)

        def reembed(source: str | None, progress=gr.Progress()):
            try:
                knowledge = runtime.wait_knowledge(timeout=0)
                if not source:
                    raise UserFacingError(t("knowledge.choose_embedder"))
                job = knowledge.switch_embedder(
                    source, progress=lambda fraction, message: progress(fraction, desc=reembed_progress(knowledge)))
                message = (t("knowledge.reembed_same", name=job.old) if job.old == job.new
                           else reembedding_line(knowledge))
                if job.state in ("cancelled", "failed"):
                    gr.Warning(message)
            except UserFacingError as err:
                gr.Warning(str(err))
                message = str(err)
            return (message, *listing())

        def cancel_reembed():
            job = runtime.knowledge.reembedding if runtime.knowledge is not None else None
            if job is None or not job.running:
                return t("knowledge.reembed_none")
            job.cancel.set()
            return gr.update()

        listing_outputs = [table, delete_choice, search_docs, status, embedder]
        # Progress shows on the component that is working, nowhere else.
        on_result = {"show_progress_on": [result]}
        on_hits = {"show_progress_on": [hits]}
        quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
        # Cancel is switched on before indexing starts and off when it ends (chained: see chat.py).
        add_event = add_btn.click(lambda: gr.Button(interactive=True, variant="stop"), None, cancel_btn, **quiet).then(
            add, [files], [result, *listing_outputs, files], api_name="knowledge_add",
            concurrency_limit=2, concurrency_id="ingest", **on_result,
        )
        add_event.then(lambda: gr.Button(interactive=False, variant="secondary"), None, cancel_btn, **quiet)
        cancel_btn.click(cancel_ingest, None, None, api_name="knowledge_cancel", queue=False)
        delete_event = delete_btn.click(delete, [delete_choice], [result, *listing_outputs], api_name="knowledge_delete",
                                        **on_result)
        reset_event = reset_btn.click(reset, [confirm], [result, *listing_outputs, confirm], api_name="knowledge_reset",
                                      **on_result)
        reembed_event = reembed_btn.click(
            lambda: gr.Button(interactive=True, variant="stop"), None, reembed_cancel_btn, **quiet,
        ).then(reembed, [embedder], [result, *listing_outputs], api_name="knowledge_reembed",
               concurrency_limit=1, concurrency_id="reembed", **on_result)
        reembed_event.then(lambda: gr.Button(interactive=False, variant="secondary"), None, reembed_cancel_btn, **quiet)
        reembed_cancel_btn.click(cancel_reembed, None, result, api_name="knowledge_reembed_cancel", queue=False)
        search_btn.click(search, [query, top_k, search_docs], [hits, gallery], api_name="knowledge_search", **on_hits)
        query.submit(search, [query, top_k, search_docs], [hits, gallery], **on_hits)
        self.refresh, self.listing_outputs = listing, listing_outputs
        self.changed = [add_event, delete_event, reset_event, reembed_event]

    def wire(self, app: AppTabs) -> None:
        app.demo.load(self.refresh, None, self.listing_outputs, api_name="knowledge_documents", show_progress="hidden")
        self.container.select(self.refresh, None, self.listing_outputs, show_progress="hidden")
