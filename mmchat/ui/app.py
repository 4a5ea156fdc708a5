"""Compose the Gradio app from its tabs and launch it.

`build_app(config, runtime)` returns a `gr.Blocks` (queued, with a concurrency limit) whose
status line reports the model, device, dtype, quantization and memory, and says plainly when
the offline stand-in is in use. `launch_kwargs` gives what `Blocks.launch` needs: host/port
from the config, uploads capped, and only the app's own data directory served.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from mmchat.config import AppConfig  # noqa: E402
from mmchat.runtime import Runtime  # noqa: E402
from mmchat.ui.chat import EXAMPLE_DIR, build_chat_tab  # noqa: E402
from mmchat.ui.knowledge import build_knowledge_tab, document_choices  # noqa: E402

TITLE = "mmchat — multimodal chat"


def build_app(config: AppConfig, runtime: Runtime | None = None) -> gr.Blocks:
    runtime = runtime or Runtime(config)
    # Gradio keeps its own copy of every upload; keep those inside the app's data directory
    # too, so nothing the browser sends lands elsewhere (components read this when built).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(runtime.data_dir / "gradio"))
    runtime.start()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}")
        status = gr.Markdown(runtime.status_markdown(), elem_id="mmchat-status")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat = build_chat_tab(runtime)
            if config.knowledge.enabled:
                with gr.Tab("Knowledge", id="knowledge") as knowledge_tab:
                    knowledge = build_knowledge_tab(runtime)

        def poll_status():
            # Stream the status while the models load and the knowledge base opens and
            # indexes its demo corpus, then once more with the final line.
            while not runtime.wait_loaded(timeout=1.0) or not runtime.knowledge_settled():
                yield runtime.status_markdown()
                if runtime.wait_loaded(timeout=0):
                    time.sleep(1.0)
            yield runtime.status_markdown()

        demo.load(poll_status, None, status, api_name="status")
        if config.knowledge.enabled:
            def chat_document_choices():
                return gr.Dropdown(choices=document_choices(runtime))

            listing = knowledge["listing_outputs"]
            demo.load(knowledge["refresh"], None, listing, api_name="knowledge_documents")
            knowledge_tab.select(knowledge["refresh"], None, listing)
            for event in knowledge["changed"]:
                event.then(chat_document_choices, None, chat["rag_docs"]).then(
                    runtime.status_markdown, None, status
                )
            demo.load(chat_document_choices, None, chat["rag_docs"])
    demo.queue(max_size=config.server.max_queue, default_concurrency_limit=config.server.concurrency_limit)
    demo.mmchat_runtime = runtime  # for tests and scripts that need the loaded models
    return demo


def launch_kwargs(config: AppConfig, runtime: Runtime) -> dict[str, Any]:
    return {
        "server_name": config.server.host,
        "server_port": config.server.port,
        "share": config.server.share,
        # Gradio's own cap is the larger of the two; each path then applies its own limit
        # with a message that names the file (chat images: limits.max_bytes).
        "max_file_size": max(config.limits.max_bytes, config.knowledge.max_file_mb * 1024 * 1024),
        # Thumbnails of retrieved images come from the knowledge base's kept copies.
        "allowed_paths": [str(runtime.data_dir), str(EXAMPLE_DIR), str(config.knowledge.resolved_path() / "files")],
        "show_error": False,
    }
