"""Turn a ChatSession's state into what Gradio components show. Pure; no gradio, no torch.

`chatbot_messages` gives the Chatbot's messages-format value: user images as file items with
their zero-shot labels beneath, answers with their numbered sources, the supporting passage
of each (the sentences that best match the question; a click on `[n]` in the answer or on the
passage opens the whole source) and a one-line trace, notes as titled boxes. `sources_markdown`/`sources_gallery` fill the sources panel from the
last answer's retrieval trace; `documents_rows`/`retrieval_markdown` serve the Knowledge tab;
`table_value` gives a table with its column names. Every word in the language of the request
being handled (`mmchat.ui.i18n.t`); the session's notes and the retrieval's remarks translated where
`mmchat.ui.messages` knows them; answers as they are.
"""

from __future__ import annotations

import html
import re
from typing import Any

from mmchat.ui.i18n import t, term
from mmchat.ui.messages import localize

CITATION = re.compile(r"\[(\d{1,2})\]")


def format_labels(labels: list[tuple[str, float]]) -> str:
    return " · ".join(f"{label} {p:.0%}" for label, p in labels)


def format_stats(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    ttft = stats.get("time_to_first_token_s")
    parts = [
        t("trace.first_token", s=f"{ttft:.2f}") if ttft is not None else t("trace.no_tokens"),
        f"{stats.get('tokens_per_s', 0):.1f} tok/s",
        t("trace.tokens", n=stats.get('output_tokens', 0)),
        t("trace.prompt", n=stats.get('prompt_tokens', 0)),
    ]
    reason = stats.get("finish_reason")
    if reason == "cancelled":
        parts.append(t("trace.stopped"))
    elif reason == "length":
        parts.append(t("trace.hit_max"))
    return " · ".join(parts)


def chatbot_messages(session: Any) -> list[dict[str, Any]]:
    if session is None:
        return []
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(session.history):
        if message.role == "note":
            messages.append({"role": "assistant", "content": localize(message.text), "metadata": {"title": t("chat.note")}})
            continue
        if message.role == "user":
            content: list[Any] = []
            for sha in message.image_ids:
                info = session.images.get(sha)
                if info is None:
                    continue
                content.append({"path": str(info.attachment.path), "alt_text": info.attachment.display_name})
                if info.labels:
                    content.append(f"*{info.attachment.display_name}: {format_labels(info.labels)}*")
            content.append(message.text)
            messages.append({"role": "user", "content": content})
            continue
        text = message.text or "…"
        used = used_sources(message.retrieval)
        if used:
            text = link_citations(text, index, len(used))
            text = f"{text}\n\n<sub>{format_citations(message.retrieval, message.text)}</sub>"
            text = f"{text}\n\n{evidence_html(used, index)}"
        trace = format_stats(message.stats)
        if getattr(message, "adapter", None):  # which LoRA adapter answered (none: the base)
            trace = t("trace.adapter", name=message.adapter) + (f" · {trace}" if trace else "")
        if trace:
            text = f"{text}\n\n<sub>{trace}</sub>"
        messages.append({"role": "assistant", "content": text})
    return messages


def trace_markdown(session: Any) -> str:
    """The last answer's trace, for the panel beside the chat."""
    if session is None or not session.last_stats:
        return t("trace.none")
    stats = session.last_stats
    answers = [m for m in session.history if m.role == "assistant"]
    adapter = (answers[-1].adapter if answers else None) or t("trace.base")
    rows = [
        (t("trace.row.adapter"), adapter),
        (t("trace.row.ttft"), f"{stats['time_to_first_token_s']:.3f} s" if stats.get("time_to_first_token_s") is not None else "–"),
        (t("trace.row.tps"), f"{stats.get('tokens_per_s', 0):.1f}"),
        (t("trace.row.output"), stats.get("output_tokens", 0)),
        (t("trace.row.prompt"), stats.get("prompt_tokens", 0)),
        (t("trace.row.total"), f"{stats.get('total_s', 0):.2f} s"),
        (t("trace.row.finish"), term("finish", stats.get("finish_reason", ""))),
    ]
    return f"| {t('trace.metric')} | {t('trace.value')} |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def source_label(hit: dict[str, Any]) -> str:
    page = hit.get("page")
    return t("source.page", name=hit.get("file_name", ""), page=page) if page else str(hit.get("file_name", ""))


def used_sources(retrieval: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The retrieved chunks that went into the prompt, in their `[n]` order."""
    if not retrieval:
        return []
    hits = retrieval.get("hits", [])
    return hits[: retrieval.get("used", len(hits))]


def cited_numbers(answer: str, count: int) -> set[int]:
    return {int(n) for n in CITATION.findall(answer or "") if 1 <= int(n) <= count}


def format_citations(retrieval: dict[str, Any] | None, answer: str = "") -> str:
    """'Sources: [1] guide.pdf, p. 2 · [2] notes.md (not cited)' for the sources in the prompt.

    With an answer given, sources it does not cite are marked, so the footer does not claim
    the answer used them.
    """
    used = used_sources(retrieval)
    if not used:
        return ""
    cited = cited_numbers(answer, len(used)) if answer else None
    parts = []
    for n, hit in enumerate(used, start=1):
        mark = t("source.not_cited") if cited is not None and n not in cited else ""
        parts.append(f"[{n}] {source_label(hit)}{mark}")
    return t("source.sources") + " · ".join(parts)


def source_anchor(message_index: int, number: int) -> str:
    return f"mmchat-src-{message_index}-{number}"


def link_citations(answer: str, message_index: int, count: int) -> str:
    """`[n]` in an answer becomes a link that opens source n's passage below the answer."""
    def link(match: re.Match) -> str:
        number = int(match.group(1))
        if not 1 <= number <= count:
            return match.group(0)
        return f'<a class="mmchat-cite" href="#{source_anchor(message_index, number)}">[{number}]</a>'

    return CITATION.sub(link, answer)


def evidence_html(used: list[dict[str, Any]], message_index: int) -> str:
    """One collapsed block per source: `[n] file, p. N — "best sentences"`; open: the whole chunk."""
    blocks = []
    for n, hit in enumerate(used, start=1):
        evidence = hit.get("evidence") or _excerpt(hit.get("text", ""), 240)
        whole = html.escape(hit.get("text", "")).replace("\n", "<br>")
        blocks.append(
            f'<details class="mmchat-source" id="{source_anchor(message_index, n)}"><summary>'
            f"<b>[{n}]</b> {html.escape(source_label(hit))} — “{html.escape(evidence)}”</summary>"
            f'<div class="mmchat-source-text">{whole}</div></details>'
        )
    return "\n".join(blocks)


def _last_retrieval(session: Any) -> dict[str, Any] | None:
    if session is None:
        return None
    for message in reversed(session.history):
        if message.role == "assistant":
            return message.retrieval
    return None


def _excerpt(text: str, limit: int = 280) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|")


def _score_cell(hit: dict[str, Any]) -> str:
    """The fused score, and the calibrated relevance the floor is compared with."""
    cell = f"{hit.get('score', 0):.3f}"
    if hit.get("relevance") is not None:
        cell += t("retrieval.rel", r=f"{hit['relevance']:.2f}")
    return cell


def retrieval_markdown(retrieval: dict[str, Any] | None, numbered_only: bool = True) -> str:
    """Each retrieved chunk: number, file, page, fused score, dense and BM25 ranks, excerpt."""
    if not retrieval:
        return t("retrieval.none")
    hits = retrieval.get("hits", [])
    used = retrieval.get("used", len(hits)) if numbered_only else len(hits)
    lines = [t("retrieval.query", query=_excerpt(retrieval.get("query", ""), 120),
               mode=term("mode", retrieval.get("mode", "hybrid")))]
    for note in [*retrieval.get("notes", []), *retrieval.get("info", [])]:
        lines.append(f"> {localize(note)}")
    if not hits:
        lines.append(t("retrieval.nothing"))
    else:
        lines.append(t("retrieval.header") + "\n|---|---|---|---|---|---|")
        for n, hit in enumerate(hits, start=1):
            number = f"[{n}]" if n <= used else "–"
            dense = f"{hit['dense']:.2f} (#{hit['dense_rank']})" if hit.get("dense") is not None else "–"
            lexical = f"{hit['lexical']:.1f} (#{hit['lexical_rank']})" if hit.get("lexical") is not None else "–"
            lines[-1] += f"\n| {number} | {source_label(hit)} | {_score_cell(hit)} | {dense} | {lexical} | {_excerpt(hit.get('text', ''))} |"
    images = retrieval.get("images", [])
    if images:
        lines.append(t("retrieval.images") + " · ".join(f"{h['file_name']} ({h['score']:.2f})" for h in images))
    timings = retrieval.get("timings_ms", {})
    if timings:
        lines.append("<sub>" + " · ".join(f"{term('timing', k)} {v:.1f} ms" for k, v in timings.items()) + "</sub>")
    return "\n\n".join(lines)


def sources_markdown(session: Any) -> str:
    return retrieval_markdown(_last_retrieval(session))


def sources_gallery(session: Any, knowledge: Any = None) -> list[tuple[Any, str]]:
    """The last answer's retrieved images, each found by its id in `knowledge` (default: the
    session's knowledge base) now.

    A trace (possibly from an imported chat) is never trusted for a path: an image the
    knowledge base no longer holds (or never held) is shown as a grey "missing" tile.
    """
    retrieval = _last_retrieval(session) or {}
    knowledge = knowledge if knowledge is not None else getattr(session, "knowledge", None)
    return image_gallery(retrieval.get("images", []), knowledge)


def image_gallery(image_hits: list[dict[str, Any]], knowledge: Any) -> list[tuple[Any, str]]:
    """Gallery items for retrieved images (trace dicts), each found by its id in `knowledge`."""
    items: list[tuple[Any, str]] = []
    for hit in image_hits:
        score = hit.get("score")
        caption = f"{hit.get('file_name', '')} ({score:.2f})" if isinstance(score, (int, float)) else str(hit.get("file_name", ""))
        path = knowledge.image_file(hit.get("doc_id")) if knowledge is not None else None
        if path is not None:
            items.append((str(path), caption))
        else:
            items.append((_missing_tile(), t("gallery.missing", caption=caption)))
    return items


def _missing_tile() -> Any:
    from PIL import Image

    return Image.new("RGB", (96, 96), (200, 200, 200))


def format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def documents_rows(records: list[Any]) -> list[list[Any]]:
    import time

    return [
        [r.file_name, term("kind", r.kind), r.chunks, r.pages or "", format_bytes(r.size_bytes),
         time.strftime("%Y-%m-%d %H:%M", time.localtime(r.added)), r.doc_id[:12]]
        for r in records
    ]


def table_value(rows: list[list[Any]], headers: list[str]) -> Any:
    """A Dataframe's value with its column names (gradio takes them from it, API clients too)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=headers)


def document_headers() -> list[str]:
    """The documents table's column names (name, kind, chunks, pages, size, added, id)."""
    return [t(f"documents.{key}") for key in ("name", "kind", "chunks", "pages", "size", "added", "id")]
