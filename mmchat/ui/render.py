"""Turn a ChatSession's state into what Gradio components show. Pure; no gradio, no torch.

`chatbot_messages` gives the Chatbot's messages-format value: user images as file items with
their zero-shot labels beneath, answers with a one-line trace, notes as titled boxes.
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
