"""Layout helpers for the Gradio UI: the page's CSS and the one-line status with its details.

`APP_CSS` keeps the first screen for the chat (a small title, a one-line status, a chat box
sized to the viewport), makes the action buttons compact, and keeps the retrieval tables
readable on a desktop and a phone (number columns never wrap; below 640 px each hit becomes a
small card; Compare's columns stack). `status_line(runtime)` is the short line ("offline · cpu · 7 docs · ready") and
`status_view(runtime)` wraps it in a `<details>` whose body is the full
`Runtime.status_markdown()`. Pure string building: no gradio, no torch; reads only public
attributes of `Runtime` and its backend and knowledge base.
"""

from __future__ import annotations

import html
from typing import Any

# Classes and ids used here are set on components in app.py, chat.py, knowledge.py and compare.py.
APP_CSS = """
#mmchat-title h2 { font-size: 1.2rem; margin: 0; }
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
  .mmchat-hits td:last-child { display: block; min-width: 0; }
}
"""


def status_line(runtime: Any) -> str:
    """One short line: model, device, documents, adapters, readiness (plain text, HTML-escaped)."""
    if not runtime.wait_loaded(timeout=0):
        return html.escape(f"⏳ loading · {runtime.phase}")
    if runtime.error is not None:
        return "❌ the model failed to load (details)"
    info = runtime.backend.info
    parts = [info.preset, info.device]
    adapters = getattr(runtime, "adapters", None)
    if adapters is not None and adapters.summary():
        parts.append(adapters.summary())
    ready = "ready"
    if not runtime.config.knowledge.enabled:
        parts.append("knowledge off")
    elif runtime.knowledge is not None:
        count = runtime.knowledge.counts()["documents"]
        parts.append(f"{count} doc{'' if count == 1 else 's'}")
        if not runtime.knowledge_settled():
            ready = "indexing…"
    elif runtime.knowledge_error is not None:
        parts.append("knowledge unavailable")
    else:
        ready = "opening knowledge…"
    parts.append(ready)
    if info.is_stand_in:
        parts.append("⚠️ offline stand-in")
    return html.escape(" · ".join(parts))


def status_view(runtime: Any) -> str:
    """The status component's value: the short line, the full status on demand."""
    return (
        f"<details><summary>{status_line(runtime)}</summary>\n\n"
        f"{runtime.status_markdown()}\n\n</details>"
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
