"""Turn a conversation into chat-template messages, and fit it into the model's context.

Pure functions: history in, `(messages, image_ids)` out, where `messages` use the
chat-template content format (`{"type": "text"}` / `{"type": "image"}` items) that
transformers processors render, and `image_ids` lists the images in order of appearance.
Retrieved context (RAG) joins the latest user turn here, numbered from the retrieval trace's
hits (`hit_sources`); the system prompt's answer-language line (`LANGUAGE_INSTRUCTIONS`, chosen
by `mmchat.language`) is added with `with_instruction`. Nothing here loads models or
touches files; token counting is a function passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mmchat.backends.base import PromptMessage
from mmchat.errors import PromptTooLong

MODEL_ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Turn:
    """What the prompt builder needs of one history message."""

    role: str
    text: str
    image_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    """One numbered piece of retrieved context."""

    number: int
    where: str  # "guide.pdf, p. 2"
    text: str


CONTEXT_INSTRUCTIONS = (
    "Answer the question using the numbered sources below. After each fact you use, cite its "
    "source number in square brackets, like [1] or [2]. If the sources do not contain the "
    "answer, say so."
)


# The system prompt's line on the answer's language, for a model that writes more than one
# (`mmchat.language.instruction` picks it by the question's language).
LANGUAGE_INSTRUCTIONS = {
    "en": "Answer in the language of the question.",
    "zh": "Answer in the language of the question: it is in Chinese, so answer in Chinese (请用中文回答).",
}


def with_instruction(system_prompt: str, instruction: str) -> str:
    """The system prompt with one more instruction after it (or alone, when the prompt is empty)."""
    return "\n".join(part for part in (system_prompt.strip(), instruction.strip()) if part)


def hit_sources(hits: Sequence[Mapping[str, Any]], prefer: Sequence[str] = ("passage",)) -> list[Source]:
    """Retrieval-trace hits as numbered sources: where = "file, p. N"; text = the first of the
    `prefer` keys a hit has (its trimmed "passage", the "evidence" shown under an answer), else
    the whole chunk."""
    return [
        Source(n, hit["file_name"] + (f", p. {hit['page']}" if hit.get("page") else ""),
               next((hit[key] for key in prefer if hit.get(key)), hit["text"]))
        for n, hit in enumerate(hits, start=1)
    ]


def with_context(question: str, sources: Sequence[Source]) -> str:
    """The latest user turn's text with the retrieved sources in front, numbered for citing."""
    if not sources:
        return question
    blocks = "\n\n".join(f"[{s.number}] ({s.where})\n{s.text.strip()}" for s in sources)
    return f"{CONTEXT_INSTRUCTIONS}\n\nSources:\n{blocks}\n\nQuestion: {question}"


def replace_last_user_text(turns: Sequence[Turn], text: str, extra_images: Sequence[str] = ()) -> list[Turn]:
    """A copy of `turns` whose latest user turn carries `text` (and extra context images)."""
    turns = list(turns)
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            turn = turns[index]
            turns[index] = Turn("user", text, tuple(turn.image_ids) + tuple(extra_images))
            break
    return turns


@dataclass(frozen=True)
class Prompt:
    messages: list[PromptMessage]
    image_ids: list[str]
    dropped_turns: int = 0  # oldest model-visible turns left out to fit the context
    prompt_tokens: int = 0


def render_messages(system_prompt: str, turns: Sequence[Turn]) -> tuple[list[PromptMessage], list[str]]:
    messages: list[PromptMessage] = []
    image_ids: list[str] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt.strip()}]})
    for turn in turns:
        if turn.role not in MODEL_ROLES:
            continue
        content: list[dict] = [{"type": "image"} for _ in turn.image_ids]
        image_ids.extend(turn.image_ids)
        content.append({"type": "text", "text": turn.text})
        if messages and messages[-1]["role"] == turn.role:
            # Templates such as LLaVA's require alternating roles; merge rather than drop.
            messages[-1]["content"].extend(content)
        else:
            messages.append({"role": turn.role, "content": content})
    return messages, image_ids


def _start_of_exchanges(turns: Sequence[Turn]) -> list[int]:
    """Indices where a user turn begins an exchange; trimming drops whole exchanges."""
    return [i for i, t in enumerate(turns) if t.role == "user"]


def fit_to_context(
    system_prompt: str,
    turns: Sequence[Turn],
    count_tokens: Callable[[list[PromptMessage], list[str]], int],
    context_length: int,
    reserve_for_answer: int,
) -> Prompt:
    """Drop the oldest exchanges until the prompt plus the answer budget fits.

    The latest exchange is never dropped: if it alone does not fit, `PromptTooLong` says by
    how much, so the user can shorten it or lower max_new_tokens.
    """
    visible = [t for t in turns if t.role in MODEL_ROLES]
    budget = context_length - reserve_for_answer
    starts = _start_of_exchanges(visible) or [0]
    for dropped_exchanges, start in enumerate(starts):
        kept = visible[start:]
        messages, image_ids = render_messages(system_prompt, kept)
        tokens = count_tokens(messages, image_ids)
        if tokens <= budget:
            return Prompt(messages, image_ids, dropped_turns=start, prompt_tokens=tokens)
    raise PromptTooLong(
        f"the message needs {tokens} tokens but only {max(budget, 0)} fit "
        f"(context {context_length} minus {reserve_for_answer} reserved for the answer); "
        "shorten the message, attach fewer images, or lower max new tokens"
    )
