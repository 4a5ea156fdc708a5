"""Layout helpers for the Gradio UI: the page's CSS and the one-line status with its details.

`APP_CSS` keeps the first screen for the chat (a small title, a one-line status, a chat box
sized to the viewport), makes the action buttons compact, and keeps the retrieval tables
readable on a desktop and a phone (number columns never wrap; below 640 px each hit becomes a
small card; Compare's columns stack; the title shares its line with the language switch).
`status_line(runtime)` is the short line ("offline · cpu · 7 docs · ready") and
`status_view(runtime)` wraps it in a `<details>` whose body is the full status
(`status_details`); `knowledge_status` is the Knowledge tab's line. Every string is in the
visitor's language (`mmchat.ui.i18n`). Pure string building: no gradio, no torch; reads only
public attributes of `Runtime` and its backend, adapter registry and knowledge base.
"""

from __future__ import annotations

import html
import time
from typing import Any

from mmchat.ui.i18n import t, term
from mmchat.ui.messages import localize

# Classes and ids used here are set on components in app.py, chat.py, knowledge.py and compare.py.
APP_CSS = """
#mmchat-title h2 { font-size: 1.2rem; margin: 0; }
/* The title and the language switch share one line. */
#mmchat-header { align-items: center; flex-wrap: nowrap; gap: 8px; }
#mmchat-header > #mmchat-title { flex: 1 1 0 !important; min-width: 0 !important; }
#mmchat-header > #mmchat-lang-switch { flex: 0 0 auto !important; width: auto !important; font-size: var(--text-sm);
  white-space: nowrap; }
#mmchat-lang-switch .html-container, #mmchat-lang-switch .prose { width: auto !important; padding: 0 !important; }
#mmchat-lang a { text-decoration: none; }
@media (max-width: 640px) { #mmchat-title h2 { font-size: 1rem; } }  /* title and switch on one line */
html[lang="en"] #mmchat-lang a[lang="en"], html[lang="zh-CN"] #mmchat-lang a[lang="zh-CN"] { font-weight: 700; }
#mmchat-status { font-size: var(--text-sm); }
#mmchat-status details > summary { cursor: pointer; list-style-position: inside; }
#mmchat-status details[open] > summary { margin-bottom: 0.4em; }
.mmchat-actions { gap: 6px !important; flex-wrap: wrap; }
.mmchat-actions > * { flex: 1 1 72px !important; min-width: 64px !important; }
/* Stop and Cancel switch colour at once when a run starts or ends (no fade). */
#mmchat-stop, #mmchat-knowledge-cancel { transition: none !important; }
/* Four tabs fit a phone's width in one row instead of hiding behind a "more" menu. */
@media (max-width: 640px) { .tab-container > button { padding: 4px 7px !important; } }
/* Compare: columns side by side on a desktop, stacked on a phone; each a bordered card. */
#mmchat-compare-answers { flex-wrap: wrap; gap: 8px; }
#mmchat-compare-answers > .mmchat-compare-col { flex: 1 1 240px !important; min-width: 240px !important;
  border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px 10px; }
#mmchat-compare-stop { transition: none !important; }
/* Retrieval tables: number columns stay on one line, the excerpt takes the rest. */
.mmchat-hits table { width: 100%; table-layout: auto; }
.mmchat-hits th, .mmchat-hits td { white-space: nowrap; padding: 4px 6px !important; vertical-align: top; }
.mmchat-hits th:last-child, .mmchat-hits td:last-child { white-space: normal; min-width: 18ch; width: 100%; }
.mmchat-hits .prose, .mmchat-hits .md { overflow-x: auto; }
@media (max-width: 640px) {
  .mmchat-hits table, .mmchat-hits tbody, .mmchat-hits tr { display: block; width: 100%; }
  .mmchat-hits table { border: none !important; }
  .mmchat-hits thead { display: none; }
  .mmchat-hits tr { border-top: 1px solid var(--border-color-primary); padding: 4px 0; }
  .mmchat-hits td { display: inline-block; border: none !important; padding: 2px 6px 2px 0 !important; }
  .mmchat-hits td:nth-child(3)::before { content: "score "; opacity: 0.6; }
  .mmchat-hits td:nth-child(4)::before { content: "dense "; opacity: 0.6; }
  .mmchat-hits td:nth-child(5)::before { content: "BM25 "; opacity: 0.6; }
  /* The same in Chinese (gradio's page sets <html lang> to the language it shows). */
  html[lang="zh-CN"] .mmchat-hits td:nth-child(3)::before { content: "得分 "; }
  html[lang="zh-CN"] .mmchat-hits td:nth-child(4)::before { content: "向量 "; }
  .mmchat-hits td:last-child { display: block; min-width: 0; }
}
"""


def status_line(runtime: Any) -> str:
    """One short line: model, device, documents, adapters, readiness (plain text, HTML-escaped)."""
    if not runtime.wait_loaded(timeout=0):
        return html.escape(t("status.loading", phase=term("phase", runtime.phase)))
    if runtime.error is not None:
        return t("status.failed")
    info = runtime.backend.info
    parts = [info.preset, info.device]
    adapters = getattr(runtime, "adapters", None)
    if adapters is not None and adapters.summary():  # '' when this model takes no adapters
        count = len(adapters.adapters())
        parts.append(t("status.adapter" if count == 1 else "status.adapters", n=count))
    ready = t("status.ready")
    if not runtime.config.knowledge.enabled:
        parts.append(t("status.knowledge_off"))
    elif runtime.knowledge is not None:
        count = runtime.knowledge.counts()["documents"]
        parts.append(t("status.doc" if count == 1 else "status.docs", n=count))
        if not runtime.knowledge_settled():
            ready = t("status.indexing")
    elif runtime.knowledge_error is not None:
        parts.append(t("status.knowledge_unavailable"))
    else:
        ready = t("status.opening")
    parts.append(ready)
    if info.is_stand_in:
        parts.append(t("status.stand_in"))
    return html.escape(" · ".join(parts))


def knowledge_status(runtime: Any) -> str:
    """The Knowledge tab's status line: documents, chunks, images, where, embedder, busy note."""
    if not runtime.config.knowledge.enabled:
        return t("kstatus.off")
    knowledge = runtime.knowledge
    if knowledge is None:
        if runtime.knowledge_error is not None:
            return t("kstatus.unavailable", error=runtime.knowledge_error)
        return t("kstatus.phase", phase=term("phase", runtime.knowledge_phase))
    counts = knowledge.counts()
    config = knowledge.config
    where = (t("kstatus.server", host=f"{config.host}:{config.port}") if config.host
             else t("kstatus.embedded", path=knowledge.root / "chroma"))
    line = t("kstatus.line", documents=counts["documents"], chunks=counts["chunks"], images=counts["images"],
             where=where, embedder=knowledge.text_embedder.model_name)
    reembedding = reembedding_line(knowledge)
    if reembedding:
        line += f"\n\n> {reembedding}"
    note = localize(knowledge.busy_note())  # the knowledge base's own words, in the visitor's language
    return f"{line}\n\n> ⏳ {note}" if note else line


def reembedding_line(knowledge: Any) -> str:
    """The running or last re-embedding, or that one is due; "" when there is nothing to say."""
    job = knowledge.reembedding
    if job is None:
        if knowledge.embedder_pending:
            return t("kstatus.reembed_pending", old=knowledge.text_embedder.model_name,
                     new=knowledge.wanted_embedder[0].model_name)
        return ""
    values = {"old": job.old, "new": job.new, "done": f"{job.done:,}", "total": f"{job.total:,}"}
    if job.state == "running":
        return t("kstatus.reembed_running", **values)
    if job.state == "done":
        return t("kstatus.reembed_done", chunks=f"{job.total:,}", seconds=f"{job.seconds:.0f}", **values)
    if job.state == "cancelled":
        return t("kstatus.reembed_cancelled", **values)
    if job.state == "interrupted":
        return t("kstatus.reembed_interrupted", **values)
    return t("kstatus.reembed_failed", error=job.error, **values)


def adapters_status(runtime: Any) -> str:
    """The adapter store's line of the full status."""
    if not runtime.config.adapters.enabled:
        return t("astatus.off")
    if runtime.adapters_error is not None:
        return t("astatus.unavailable", error=runtime.adapters_error)
    registry = runtime.adapters
    if registry is None:
        return t("astatus.none")
    adapters = registry.adapters()
    names = ", ".join(f"`{a.name}`" for a in adapters) or t("astatus.no_names")
    stores = (t("astatus.one_store", root=registry.store.root) if registry.user_store is registry.store else
              t("astatus.two_stores", shipped=registry.store.root, yours=registry.user_store.root))
    count = len(adapters)
    summary = t("status.adapter" if count == 1 else "status.adapters", n=count)
    text = t("astatus.line", summary=summary, names=names, stores=stores)
    if registry.notes:  # the registry's own words, in the visitor's language
        text += "\n\n" + "\n".join(t("astatus.not_loaded", note=localize(note)) for note in registry.notes)
    return text


def status_details(runtime: Any) -> str:
    """The full status: model, device, dtype, quantization, memory, image encoder, knowledge base
    and adapters, in the visitor's language (the backend's own descriptions stay as they are)."""
    if not runtime.wait_loaded(timeout=0):
        return t("details.loading", phase=term("phase", runtime.phase), s=f"{time.time() - runtime.started_at:.0f}")
    if runtime.error is not None:
        return t("details.failed", error=runtime.error)
    info = runtime.backend.info
    parts = [t("details.model", preset=info.preset, device=info.device, dtype=info.dtype,
               quantization=info.quantization, context=info.context_length)]
    memory = runtime.backend.memory_summary()
    if memory:
        parts.append(memory)
    if runtime.encoder is not None:
        parts.append(t("details.images", name=runtime.encoder.name))
    parts.append(t("details.loaded_in", s=f"{runtime.load_seconds:.1f}"))
    lines = [" · ".join(parts), knowledge_status(runtime), adapters_status(runtime)]
    if info.is_stand_in:
        lines.append(f"> ⚠️ {info.description}")
    if runtime.encoder is not None and getattr(runtime.encoder, "is_stand_in", False) and not info.is_stand_in:
        lines.append(t("details.standin_encoder"))
    return "\n\n".join(lines)


def status_view(runtime: Any) -> str:
    """The status component's value: the short line, the full status on demand."""
    return (
        f"<details><summary>{status_line(runtime)}</summary>\n\n"
        f"{status_details(runtime)}\n\n</details>"
    )


# A click on `[n]` in an answer opens source n's passage under that answer (the links and the
# `<details id=...>` blocks come from `mmchat.ui.render`); gradio sanitises message HTML, so
# the behaviour lives here, once, for the whole page.
CITATION_HEAD = """
<style>
details.mmchat-source { margin: 2px 0; font-size: 0.92em; }
details.mmchat-source > summary { cursor: pointer; }
details.mmchat-source .mmchat-source-text { max-height: 16em; overflow-y: auto; padding: 4px 8px;
  border-left: 3px solid var(--border-color-primary); white-space: normal; }
a.mmchat-cite { text-decoration: none; font-weight: 600; }
</style>
<script>
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a.mmchat-cite, a[href^='#mmchat-src-']");
  if (!link) return;
  const target = document.getElementById(link.getAttribute("href").slice(1));
  if (!target) return;
  event.preventDefault();
  target.open = true;
  target.scrollIntoView({block: "nearest", behavior: "smooth"});
});
</script>
"""
