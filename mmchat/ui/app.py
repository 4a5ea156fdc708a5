"""Compose the Gradio app from its tabs and launch it.

`build_app(config, runtime)` builds each tab (Chat, Knowledge, Compare, Adapters, Fine-tune:
one object each, `mmchat.ui.tabs`) and then lets each wire itself to the others; it returns a `gr.Blocks`
(queued, with a concurrency limit) whose
status is one short line ("offline · cpu · 7 docs · ready", saying plainly when the offline
stand-in is in use) that opens on demand to the model, device, dtype, quantization, memory and
knowledge base (`mmchat.ui.style`, which also holds the page's CSS). Every string is in
English and Simplified Chinese (`mmchat.ui.i18n`): the page follows the browser's language,
and the header's switch (`?lang=` links) picks one for good (a cookie).
`launch_kwargs` gives what `Blocks.launch` needs: host/port from the config, uploads capped,
only the app's own directories served (nothing else from the working directory or the temp
folder), unknown Host headers and other sites' pages refused, served files inert
(`mmchat.ui.security`), the page in the visitor's language and both string tables. Gradio's
cached copies older than an hour are deleted, and so are exports (at start and on each
export; a session's exports also when it ends).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from mmchat.config import AppConfig  # noqa: E402
from mmchat.runtime import Runtime  # noqa: E402
from mmchat.session import EXPORT_MAX_AGE_S, purge_exports  # noqa: E402
from mmchat.ui.adapters import AdaptersTab  # noqa: E402
from mmchat.ui.chat import EXAMPLE_DIR, ChatTab, end_session  # noqa: E402
from mmchat.ui.compare import CompareTab  # noqa: E402
from mmchat.ui.finetune import FinetuneTab  # noqa: E402
from mmchat.ui.i18n import PageLanguage, gradio_i18n, localize_events, ui  # noqa: E402
from mmchat.ui.knowledge import KnowledgeTab  # noqa: E402
from mmchat.ui.security import SERVED_DIRS_ATTR, restrict_file_moves  # noqa: E402
from mmchat.ui.style import APP_CSS, CITATION_HEAD, status_view  # noqa: E402
from mmchat.ui.tabs import AppTabs, Tab  # noqa: E402

TITLE = "mmchat — multimodal chat"
# Plain links: the middleware (`PageLanguage`) stores the choice and serves the page in it.
LANGUAGE_SWITCH = ('<nav id="mmchat-lang"><a href="?lang=en" hreflang="en" lang="en">English</a> · '
                   '<a href="?lang=zh-CN" hreflang="zh-CN" lang="zh-CN">中文</a></nav>')


def build_app(config: AppConfig, runtime: Runtime | None = None) -> gr.Blocks:
    runtime = runtime or Runtime(config)
    # Gradio keeps its own copy of every upload; keep those inside the app's data directory
    # too, so nothing the browser sends lands elsewhere (components read this when built).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(runtime.data_dir / "gradio"))
    runtime.start()
    purge_exports(runtime.export_dir)  # a restart ends every session: none of these is wanted
    # Gradio's cached copies (uploads, files shown, downloads) go after an hour, checked every
    # ten minutes; a page open longer gets fresh copies with its next update.
    tabs: list[Tab] = [ChatTab(runtime), KnowledgeTab(runtime), CompareTab(runtime), AdaptersTab(runtime),
                       FinetuneTab(runtime)]
    with gr.Blocks(title=TITLE, delete_cache=(600, EXPORT_MAX_AGE_S)) as demo:
        with gr.Row(elem_id="mmchat-header"):
            gr.Markdown(ui("app.title"), elem_id="mmchat-title")
            gr.HTML(LANGUAGE_SWITCH, elem_id="mmchat-lang-switch", container=False)
        # One short line; the full status (model, memory, knowledge base) opens on demand.
        status = gr.Markdown(status_view(runtime), elem_id="mmchat-status")
        with gr.Tabs() as tabs_component:
            for tab in tabs:
                if tab.enabled:
                    with gr.Tab(ui(tab.title), id=tab.tab_id) as tab.container:
                        tab.build()
        app = AppTabs(demo, status, [tab for tab in tabs if tab.enabled], tabs_component)
        for tab in app.tabs:
            tab.wire(app)

        def poll_status():
            # Stream the status while the models load and the knowledge base opens and
            # indexes its demo corpus, then once more with the final line.
            while not runtime.wait_loaded(timeout=1.0) or not runtime.knowledge_settled():
                yield status_view(runtime)
                if runtime.wait_loaded(timeout=0):
                    time.sleep(1.0)
            yield status_view(runtime)

        demo.load(poll_status, None, status, api_name="status", show_progress="hidden")
        for tab in app.tabs:
            for event in tab.changed:
                event.then(lambda: status_view(runtime), None, status, show_progress="hidden")

        def end_browser_session(request: gr.Request) -> None:  # the tab closed: its exports go
            end_session(runtime, request.session_hash or "")

        demo.unload(end_browser_session)
    localize_events(demo)  # every handler in its visitor's language
    demo.queue(max_size=config.server.max_queue, default_concurrency_limit=config.server.concurrency_limit)
    # Files this app's events return must lie in its own directories (not merely in the working
    # directory or the temp folder, which gradio accepts by default).
    setattr(demo, SERVED_DIRS_ATTR, served_dirs(config, runtime))
    restrict_file_moves()
    demo.mmchat_runtime = runtime  # for tests and scripts that need the loaded models
    return demo


def served_dirs(config: AppConfig, runtime: Runtime) -> list[str]:
    """The only directories gradio may serve files from (besides its own upload folder):
    validated chat images, this app's exports, the example photos, and the knowledge base's
    kept copies (thumbnails of retrieved images). Not the data directory as a whole: gradio's
    upload folder lies in it and holds whatever a browser sent."""
    dirs = [runtime.upload_dir, runtime.export_dir, EXAMPLE_DIR, config.knowledge.resolved_path() / "files",
            config.runs_dir()]  # training runs: their validated dataset photos (preview, evaluation gallery)
    if runtime.knowledge is not None:  # a knowledge base given to the runtime may live elsewhere
        dirs.append(runtime.knowledge.files_dir)
    return [str(Path(d).resolve()) for d in dirs]


def launch_kwargs(config: AppConfig, runtime: Runtime) -> dict[str, Any]:
    from starlette.middleware import Middleware

    from mmchat.ui.security import (
        ALL_INTERFACES, HostGuard, OriginGuard, SafeFileResponses, UploadLimitMessage, allowed_host_names,
        origin_patterns,
    )

    # Gradio's own cap is the larger of the two; each path then applies its own limit
    # with a message that names the file (chat images: limits.max_bytes).
    max_file_size = max(config.limits.max_bytes, config.knowledge.max_file_mb * 1024 * 1024)
    allowed = served_dirs(config, runtime)
    hosts = allowed_host_names(config.server.host, config.server.allowed_hosts, config.server.share)
    any_ip = config.server.host in ALL_INTERFACES
    origins = origin_patterns(config.server.allowed_origins)  # a malformed entry fails here, not at a request
    return {
        "server_name": config.server.host,
        "server_port": config.server.port,
        "share": config.server.share,
        "max_file_size": max_file_size,
        # Gradio would also hand out anything in the working directory and the temp folder;
        # build_app's guard (security.restrict_file_moves) accepts only these directories.
        "allowed_paths": allowed,
        "app_kwargs": {"middleware": [
            Middleware(HostGuard, allowed=hosts, any_ip=any_ip),
            Middleware(OriginGuard, hosts=hosts, any_ip=any_ip, patterns=origins),  # pages of other sites
            Middleware(SafeFileResponses),
            Middleware(UploadLimitMessage, max_bytes=max_file_size),
            Middleware(PageLanguage),  # the page in the visitor's language; ?lang= switches
        ]},
        "i18n": gradio_i18n(),  # every ui(...) string, both languages
        # Everything is served by this process, through the middleware above.
        "ssr_mode": False,
        "num_workers": 0,
        "show_error": False,
        "css": APP_CSS,  # layout: mmchat.ui.style
        "head": CITATION_HEAD,  # [n] in an answer opens that source
    }
