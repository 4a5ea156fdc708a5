"""The Chat tab: multimodal textbox, streaming chatbot, controls, settings and trace.

`ChatTab(runtime).build()` lays out the components and wires every event with an `api_name`
so `gradio_client` can drive it; `/chat` takes the adapter for the answer last (default
`base`), and the answer records it. With the knowledge base on, each answer retrieves first
(settings per conversation: on/off, top k, document filter, whole document, images to the
model) and the sources panel shows the chunks and images behind the last answer. Each browser
gets its own `ChatSession` in a `gr.State`. User-fixable problems (`UserFacingError`) become
`gr.Warning` toasts and leave the message in the textbox; the session keeps working. Imports
no torch: the models live in `Runtime`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from mmchat.attachments import safe_display_name
from mmchat.config import PRESETS
from mmchat.errors import InvalidUpload, UserFacingError
from mmchat.adapters.host import BASE
from mmchat.adapters.registry import BASE_LABEL
from mmchat.runtime import Runtime
from mmchat.ui.i18n import t, term, ui
from mmchat.ui.knowledge import document_choices
from mmchat.ui.messages import localize
from mmchat.ui.render import chatbot_messages, sources_gallery, sources_markdown, trace_markdown
from mmchat.ui.tabs import AppTabs, Tab, export_folder, upload_path

log = logging.getLogger(__name__)

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "knowledge" / "images"


def stop_button(running: bool) -> Any:
    """Stop looks active (red, clickable) only while something runs."""
    return gr.Button(interactive=running, variant="stop" if running else "secondary")


def chat_progress(chatbot: Any) -> dict[str, Any]:
    """A chat event shows its progress as a small timer on the chat box alone."""
    return {"show_progress": "minimal", "show_progress_on": [chatbot]}


# Helper events that only switch a button: instant, no progress, not part of the API.
QUIET: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}


def without_refused(message: dict, err: Exception) -> dict:
    """The message to put back in the textbox after `err`: its text, minus any file the error
    refused (an `InvalidUpload` names it first: "photo.png: ..."), so no broken thumbnail stays."""
    if not isinstance(err, InvalidUpload):
        return message
    reason = str(err)
    kept = [f for f in message.get("files") or []
            if not reason.startswith(safe_display_name(Path(upload_path(f)).name) + ":")]
    return {**message, "files": kept}


def examples() -> list[dict[str, Any]]:
    pairs = [("cat.png", "What animal is this?"), ("coffee.png", "What is in the cup?")]
    return [
        {"text": question, "files": [str(EXAMPLE_DIR / name)]}
        for name, question in pairs
        if (EXAMPLE_DIR / name).is_file()
    ]


def end_session(runtime: Runtime, session_hash: str) -> None:
    """Delete a finished browser session's exports and gradio's cached copies of them."""
    folder = export_folder(runtime, session_hash)
    if folder.is_dir():
        from gradio.processing_utils import hash_file
        from gradio.utils import get_upload_folder

        for export in folder.glob("*.zip"):
            shutil.rmtree(Path(get_upload_folder()) / hash_file(export), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


class ChatTab(Tab):
    """The Chat tab; `wire` keeps its document filter and adapter list in step with the other tabs."""

    title, tab_id = "tab.chat", "chat"

    def build(self) -> None:
        runtime = self.runtime
        gen = runtime.config.generation
        limits = runtime.config.limits
        session_state = gr.State(None)

        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(
                    label=ui("chat.chatbot"),
                    # Sized to the viewport so the input stays on the first screen of a phone.
                    height="58vh",
                    min_height=260,
                    max_height=620,
                    buttons=["copy", "copy_all"],
                    feedback_options=None,
                    elem_id="mmchat-chatbot",
                )
                textbox = gr.MultimodalTextbox(
                    placeholder=ui("chat.placeholder"),
                    # No extension filter: gradio's refused names without an extension or with a
                    # second one ("IMG_0412", "cat.png.download") as "Invalid file type: None"; every
                    # file is checked by content instead, and a refusal names it and the accepted formats.
                    file_types=None,
                    file_count="multiple",
                    max_plain_text_length=limits.max_prompt_chars,
                    label=ui("chat.input"),  # for screen readers: it is not shown
                    show_label=False,
                    elem_id="mmchat-input",
                    sources=["upload"],
                )
                with gr.Row(elem_classes="mmchat-actions"):
                    # Stop looks active only while an answer streams (switched by the events below).
                    stop_btn = gr.Button(ui("shared.stop"), variant="secondary", interactive=False, size="sm", elem_id="mmchat-stop")
                    regen_btn = gr.Button(ui("chat.regenerate"), size="sm", elem_id="mmchat-regenerate")
                    undo_btn = gr.Button(ui("chat.undo"), size="sm", elem_id="mmchat-undo")
                    clear_btn = gr.Button(ui("chat.clear"), size="sm", elem_id="mmchat-clear")
                    export_btn = gr.Button(ui("chat.export"), size="sm", elem_id="mmchat-export")
                    import_btn = gr.UploadButton(ui("chat.import"), file_types=[".zip", ".json"], size="sm")
                export_file = gr.File(label=ui("chat.exported"), visible=False, interactive=False)
                if examples():
                    gr.Examples(examples=examples(), inputs=[textbox], label=ui("chat.examples"), elem_id="mmchat-examples")
            with gr.Column(scale=2, min_width=260):
                # Chosen per message: the answer remembers it (trace, Regenerate, Export/Import).
                # Any name passes the dropdown (API clients never see its refreshed choices);
                # the session refuses an unknown one with the list of loaded adapters.
                adapter = gr.Dropdown(label=ui("chat.adapter"), choices=[(BASE_LABEL, BASE)],
                                      value=BASE, elem_id="mmchat-adapter", allow_custom_value=True,
                                      info=ui("chat.adapter_info"))
                with gr.Accordion(ui("chat.generation"), open=True):
                    system_prompt = gr.Textbox(label=ui("chat.system_prompt"), value=gen.system_prompt, lines=3)
                    max_new_tokens = gr.Slider(1, 2048, value=gen.max_new_tokens, step=1, label=ui("shared.max_new_tokens"))
                    temperature = gr.Slider(0.0, 2.0, value=gen.temperature, step=0.05, label=ui("chat.temperature"))
                    top_p = gr.Slider(0.05, 1.0, value=gen.top_p, step=0.05, label=ui("chat.top_p"))
                knowledge_on = runtime.config.knowledge.enabled
                with gr.Accordion(ui("chat.knowledge"), open=knowledge_on, visible=knowledge_on):
                    use_knowledge = gr.Checkbox(label=ui("chat.use_knowledge"), value=knowledge_on,
                                                elem_id="mmchat-use-knowledge")
                    rag_top_k = gr.Slider(
                        1, 12, value=runtime.config.knowledge.top_k, step=1, label=ui("chat.top_k"),
                        info=ui("chat.top_k_info", n=PRESETS["offline"].answer.max_sources),
                    )
                    rag_docs = gr.Dropdown(label=ui("chat.rag_docs"), choices=[], multiselect=True,
                                           elem_id="mmchat-rag-docs")
                    whole_document = gr.Checkbox(label=ui("chat.whole_document"), value=False)
                    images_to_model = gr.Checkbox(label=ui("chat.images_to_model"), value=False)
                with gr.Accordion(ui("chat.last_answer"), open=True):
                    trace = gr.Markdown(ui("trace.none"), elem_id="mmchat-trace")
        with gr.Accordion(ui("chat.sources"), open=True, visible=runtime.config.knowledge.enabled):
            sources = gr.Markdown(ui("retrieval.none"), elem_id="mmchat-sources", elem_classes="mmchat-hits")
            source_images = gr.Gallery(label=ui("chat.retrieved_images"), columns=4, height=180, object_fit="contain",
                                       elem_id="mmchat-source-images")

        settings = [system_prompt, max_new_tokens, temperature, top_p, use_knowledge, rag_top_k, rag_docs,
                    whole_document, images_to_model]

        def warn(err: Exception) -> None:
            if isinstance(err, UserFacingError):
                gr.Warning(localize(str(err)))
            else:  # a bug or a backend failure: keep serving, say what happened, log the traceback
                log.exception("chat event failed")
                gr.Warning(t("chat.failed", error=f"{err.__class__.__name__}: {err}"))

        def ensure_session(session: Any) -> Any:
            return session if session is not None else runtime.new_session()

        def params_from(
            session: Any, prompt: str, max_tokens: float, temp: float, nucleus: float,
            use_kb: bool = True, k: float = 4, doc_ids: list | None = None, whole: bool = False,
            send_images: bool = False,
        ) -> Any:
            from mmchat.session import RagOptions

            session.system_prompt = prompt or ""
            # The session may predate the knowledge base (it opens after the models): wait for it a
            # little, and if it is still not there the answer says it did not use the documents.
            knowledge, unavailable = runtime.knowledge_for_answer() if use_kb else (None, "")
            session.knowledge = knowledge
            session.rag = RagOptions(
                enabled=bool(use_kb) and runtime.config.knowledge.enabled, top_k=int(k),
                doc_ids=tuple(doc_ids or ()), whole_document=bool(whole), images_to_model=bool(send_images),
                unavailable=unavailable,
            )
            # The sliders set these three; the preset's repetition controls stay as they are.
            return dataclasses.replace(session.params, max_new_tokens=int(max_tokens), temperature=float(temp),
                                       top_p=float(nucleus))

        def stream_into_ui(session: Any, answer: Iterator[str]) -> Iterator[tuple]:
            # Stream at most ~20 UI updates per second; the final state is always sent.
            last = 0.0
            for _ in answer:
                now = time.perf_counter()
                if now - last >= 0.05:
                    last = now
                    yield chatbot_messages(session), gr.update(), session, gr.update(), *sources_of(session)

        def sources_of(session: Any) -> tuple:
            return sources_markdown(session), sources_gallery(session, runtime.knowledge)

        def respond(message: dict | None, session: Any, *values: Any):
            *settings_values, adapter_name = values
            message = message or {}
            text = message.get("text") or ""
            files = [upload_path(f) for f in message.get("files") or []]
            answer = None
            try:
                session = ensure_session(session)
                params = params_from(session, *settings_values)
                answer = session.send(text, files, params, adapter=adapter_name or BASE)
                first = True
                for update in stream_into_ui(session, answer):
                    if first:  # the message is accepted: clear and lock the textbox while streaming
                        first = False
                        update = (update[0], gr.MultimodalTextbox(value=None, interactive=False), *update[2:])
                    yield update
            except Exception as err:  # the textbox was locked while streaming: always unlock it
                if answer is not None:
                    answer.close()  # releases the session's busy lock before anything else can fail
                warn(err)
                yield (chatbot_messages(session), gr.MultimodalTextbox(value=without_refused(message, err), interactive=True),
                       session, gr.update(), gr.update(), gr.update())
                return
            finally:  # also when the browser goes away or rendering fails: the answer never stays open
                if answer is not None:
                    answer.close()
            yield (chatbot_messages(session), gr.MultimodalTextbox(value=None, interactive=True), session,
                   trace_markdown(session), *sources_of(session))

        def regenerate(session: Any, *settings_values: Any):
            answer = None
            try:
                session = ensure_session(session)
                params = params_from(session, *settings_values)
                answer = session.regenerate(params)
                yield from stream_into_ui(session, answer)
            except Exception as err:  # closed below, before the next yield
                warn(err)
            finally:
                if answer is not None:
                    answer.close()
            yield chatbot_messages(session), gr.update(), session, trace_markdown(session), *sources_of(session)

        def stop(session: Any) -> None:
            if session is not None:
                session.stop()

        def undo(session: Any):
            if session is None:
                return [], gr.update(), session, trace_markdown(None), *sources_of(None)
            try:
                text = session.undo()
            except UserFacingError as err:
                gr.Warning(localize(str(err)))
                return gr.update(), gr.update(), session, gr.update(), gr.update(), gr.update()
            return (chatbot_messages(session), gr.MultimodalTextbox(value={"text": text, "files": []}), session,
                    trace_markdown(session), *sources_of(session))

        def clear(session: Any):
            if session is not None:
                try:
                    session.clear()
                except UserFacingError as err:
                    gr.Warning(localize(str(err)))
                    return gr.update(), gr.update(), session, gr.update(), gr.update(), gr.update()
            return [], gr.MultimodalTextbox(value=None, interactive=True), session, trace_markdown(None), *sources_of(None)

        def export(session: Any, request: gr.Request):
            if session is None or not session.history:
                gr.Warning(t("chat.nothing_to_export"))
                return gr.File(visible=False)
            # In the browser session's own folder, under a random name; removed after an hour or
            # when the session ends (the app's unload hook calls `end_session`).
            path = session.export_download(export_folder(runtime, request.session_hash or "no-session"))
            return gr.File(value=str(path), visible=True)

        def import_chat(upload: Any, session: Any):
            # A refused import raises, so no output changes: the chat stays exactly as it was.
            try:
                session = ensure_session(session)
                session.import_chat(Path(upload_path(upload)))
            except UserFacingError as err:
                raise gr.Error(t("chat.import_refused", error=localize(str(err)))) from None
            except Exception as err:  # a bug: say so, keep the chat
                log.exception("import failed")
                raise gr.Error(t("chat.import_failed", error=err.__class__.__name__)) from None
            gr.Info(t("chat.imported", n=len(session.history)))
            return chatbot_messages(session), session, session.system_prompt

        outputs = [chatbot, textbox, session_state, trace, sources, source_images]
        limit = runtime.config.server.concurrency_limit
        # Stop is switched on before an answer streams and off when it ends (ok, failed or stopped);
        # chained, because the page runs a trigger's parallel listeners only after the queued one.
        submit_event = textbox.submit(lambda: stop_button(True), None, stop_btn, **QUIET).then(
            respond, [textbox, session_state, *settings, adapter], outputs, api_name="chat",
            concurrency_limit=limit, concurrency_id="generate", **chat_progress(chatbot),
        )
        regen_event = regen_btn.click(lambda: stop_button(True), None, stop_btn, **QUIET).then(
            regenerate, [session_state, *settings], outputs, api_name="regenerate",
            concurrency_limit=limit, concurrency_id="generate", **chat_progress(chatbot),
        )
        for event in (submit_event, regen_event):
            event.then(lambda: stop_button(False), None, stop_btn, **QUIET)
        # Stop must not wait behind the generation it stops, so it skips the queue.
        stop_btn.click(stop, [session_state], None, api_name="stop", queue=False)
        undo_btn.click(undo, [session_state], outputs, api_name="undo", queue=False, show_progress="hidden")
        clear_btn.click(clear, [session_state], outputs, api_name="clear", queue=False, show_progress="hidden")
        export_btn.click(export, [session_state], [export_file], api_name="export", show_progress="hidden")
        import_btn.upload(import_chat, [import_btn, session_state], [chatbot, session_state, system_prompt], api_name="import_chat",
                          **chat_progress(chatbot))
        self.chatbot, self.textbox, self.state, self.submit = chatbot, textbox, session_state, submit_event
        self.rag_docs, self.adapter = rag_docs, adapter

    def adapter_choices(self, current: str | None = BASE) -> Any:
        """The adapter dropdown with the adapters loaded now (the choice kept if still there, else base)."""
        registry = self.runtime.adapters
        base_label = t("chat.base_label")
        # In the visitor's language: the base's label, and a shipped adapter's line (a known text).
        choices = (registry.choices(base_label, lambda description: term("description", description))
                   if registry is not None else [(base_label, BASE)])
        return gr.Dropdown(choices=choices, value=current if current in [v for _, v in choices] else BASE)

    def refreshed_adapter_choices(self, current: str | None = BASE) -> Any:
        self.runtime.sync_adapters()  # a run in another browser may have published one
        return self.adapter_choices(current)

    def document_choices(self) -> Any:
        return gr.Dropdown(choices=document_choices(self.runtime))

    def wire(self, app: AppTabs) -> None:
        from mmchat.ui.adapters import AdaptersTab
        from mmchat.ui.knowledge import KnowledgeTab

        app.demo.load(self.adapter_choices, self.adapter, self.adapter, show_progress="hidden")
        from mmchat.ui.finetune import FinetuneTab

        # A new adapter (uploaded, deleted, trained) shows up at once in this browser, and in any
        # other open browser when it comes back to this tab.
        for source in (app.find(AdaptersTab), app.find(FinetuneTab)):
            for event in source.changed if source else []:
                event.then(self.adapter_choices, self.adapter, self.adapter, show_progress="hidden")
        self.container.select(self.refreshed_adapter_choices, self.adapter, self.adapter, show_progress="hidden")
        knowledge = app.find(KnowledgeTab)
        if knowledge is not None:
            app.demo.load(self.document_choices, None, self.rag_docs, show_progress="hidden")
            for event in knowledge.changed:
                event.then(self.document_choices, None, self.rag_docs, show_progress="hidden")
