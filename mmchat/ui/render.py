"""Turn a ChatSession's state into what Gradio components show. Pure; no gradio, no torch.

`chatbot_messages` gives the Chatbot's messages-format value: user images as file items with
their zero-shot labels beneath, answers with their numbered sources and a one-line trace,
notes as titled boxes. `sources_markdown`/`sources_gallery` fill the sources panel from the
last answer's retrieval trace; `documents_rows`/`search_markdown` serve the Knowledge tab.
"""

from __future__ import annotations

from typing import Any


def format_labels(labels: list[tuple[str, float]]) -> str:
    return " · ".join(f"{label} {p:.0%}" for label, p in labels)


def format_stats(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    ttft = stats.get("time_to_first_token_s")
    parts = [
        f"first token {ttft:.2f} s" if ttft is not None else "no tokens",
        f"{stats.get('tokens_per_s', 0):.1f} tok/s",
        f"{stats.get('output_tokens', 0)} tokens",
        f"prompt {stats.get('prompt_tokens', 0)}",
    ]
    reason = stats.get("finish_reason")
    if reason == "cancelled":
        parts.append("stopped")
    elif reason == "length":
        parts.append("hit max new tokens")
    return " · ".join(parts)


def chatbot_messages(session: Any) -> list[dict[str, Any]]:
    if session is None:
        return []
    messages: list[dict[str, Any]] = []
    for message in session.history:
        if message.role == "note":
            messages.append({"role": "assistant", "content": message.text, "metadata": {"title": "Note"}})
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
        cited = format_citations(message.retrieval)
        if cited:
            text = f"{text}\n\n<sub>{cited}</sub>"
        trace = format_stats(message.stats)
        if trace:
            text = f"{text}\n\n<sub>{trace}</sub>"
        messages.append({"role": "assistant", "content": text})
    return messages


def trace_markdown(session: Any) -> str:
    """The last answer's trace, for the panel beside the chat."""
    if session is None or not session.last_stats:
        return "*No answer yet.*"
    stats = session.last_stats
    rows = [
        ("time to first token", f"{stats['time_to_first_token_s']:.3f} s" if stats.get("time_to_first_token_s") is not None else "–"),
        ("tokens/s", f"{stats.get('tokens_per_s', 0):.1f}"),
        ("output tokens", stats.get("output_tokens", 0)),
        ("prompt tokens", stats.get("prompt_tokens", 0)),
        ("total", f"{stats.get('total_s', 0):.2f} s"),
        ("finish", stats.get("finish_reason", "")),
    ]
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def source_label(hit: dict[str, Any]) -> str:
    page = hit.get("page")
    return f"{hit.get('file_name', '')}, p. {page}" if page else str(hit.get("file_name", ""))


def format_citations(retrieval: dict[str, Any] | None) -> str:
    """'Sources: [1] guide.pdf, p. 2 · [2] ...' for the sources that went into the prompt."""
    if not retrieval:
        return ""
    used = retrieval.get("hits", [])[: retrieval.get("used", len(retrieval.get("hits", [])))]
    if not used:
        return ""
    return "Sources: " + " · ".join(f"[{n}] {source_label(h)}" for n, h in enumerate(used, start=1))


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


def retrieval_markdown(retrieval: dict[str, Any] | None, numbered_only: bool = True) -> str:
    """Each retrieved chunk: number, file, page, fused score, dense and BM25 ranks, excerpt."""
    if not retrieval:
        return "*No retrieval for this answer (the knowledge base is off or empty).*"
    hits = retrieval.get("hits", [])
    used = retrieval.get("used", len(hits)) if numbered_only else len(hits)
    lines = [f"**Query** {_excerpt(retrieval.get('query', ''), 120)} · mode {retrieval.get('mode', 'hybrid')}"]
    for note in retrieval.get("notes", []):
        lines.append(f"> {note}")
    if not hits:
        lines.append("*Nothing relevant was found.*")
    else:
        lines.append("| # | source | score | dense | BM25 | text |\n|---|---|---|---|---|---|")
        for n, hit in enumerate(hits, start=1):
            number = f"[{n}]" if n <= used else "–"
            dense = f"{hit['dense']:.2f} (#{hit['dense_rank']})" if hit.get("dense") is not None else "–"
            lexical = f"{hit['lexical']:.1f} (#{hit['lexical_rank']})" if hit.get("lexical") is not None else "–"
            lines[-1] += f"\n| {number} | {source_label(hit)} | {hit.get('score', 0):.4f} | {dense} | {lexical} | {_excerpt(hit.get('text', ''))} |"
    images = retrieval.get("images", [])
    if images:
        lines.append("**Images** " + " · ".join(f"{h['file_name']} ({h['score']:.2f})" for h in images))
    timings = retrieval.get("timings_ms", {})
    if timings:
        lines.append("<sub>" + " · ".join(f"{k} {v:.1f} ms" for k, v in timings.items()) + "</sub>")
    return "\n\n".join(lines)


def sources_markdown(session: Any) -> str:
    return retrieval_markdown(_last_retrieval(session))


def sources_gallery(session: Any) -> list[tuple[str, str]]:
    retrieval = _last_retrieval(session) or {}
    return [(h["image_path"], f"{h['file_name']} ({h['score']:.2f})") for h in retrieval.get("images", []) if h.get("image_path")]


def format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def documents_rows(records: list[Any]) -> list[list[Any]]:
    import time

    return [
        [r.file_name, r.kind, r.chunks, r.pages or "", format_bytes(r.size_bytes),
         time.strftime("%Y-%m-%d %H:%M", time.localtime(r.added)), r.doc_id[:12]]
        for r in records
    ]


DOCUMENT_HEADERS = ["name", "kind", "chunks", "pages", "size", "added", "id"]
