"""Vectors spliced into a language model's input embeddings by position, LLaVA-style.

An image reaches the offline language model as `k` vectors (frozen image features through a
trained projector) standing where the prompt holds `k` placeholder tokens. The placeholder is
an existing special token of the vocabulary that chat text never carries (`PLACEHOLDER`,
SmolLM2's `<filename>`: made inert in user text like every special token), so no token is
added to the vocabulary and the base's fingerprint — and every adapter trained on it — stays
valid. `image_text(number, k)` is what an image becomes in the prompt; `splice(embeddings,
input_ids, placeholder_id, vectors)` puts the vectors where the placeholders are, in order,
and refuses a count that does not match. One function for serving and for training, so an
adapter sees at train time exactly what chat sends.

Learned soft-prompt vectors (prompt tuning, `mmchat.vision.soft_prompt`) are spliced the same
way at slots of another such token (`SOFT_PROMPT_SLOT`, SmolLM2's `<reponame>`) that open the
system message: `soft_prompt_text(n)` is the slots' text, which training prefixes to its
system prompt, and `prefix_soft_prompt(messages, n)` puts it there in chat's messages (a system
message of the slots alone when there is none), so both render the same tokens. Text from
users must have both tokens defused before the slots are added. It does not compute features
or project them (see `mmchat.vision.features` and `mmchat.vision.projector`).
"""

from __future__ import annotations

from typing import Any, Sequence

PLACEHOLDER = "<filename>"  # SmolLM2's special token 6 (StarCoder's metadata tokens: never in chat)
SOFT_PROMPT_SLOT = "<reponame>"  # SmolLM2's special token 4, of the same family: never in chat


def image_text(number: int, k: int) -> str:
    """The prompt text of image `number`: a bracketed label around its `k` placeholders."""
    return f"[Image {number}: {PLACEHOLDER * k}]"


def soft_prompt_text(count: int) -> str:
    """The slots `count` soft-prompt vectors stand at, as prompt text (prefixed to the system prompt)."""
    return SOFT_PROMPT_SLOT * count


def prefix_soft_prompt(messages: Sequence[Any], count: int) -> list[Any]:
    """Chat's messages (content lists) with `soft_prompt_text(count)` opening the system
    message's first text — a system message of the slots alone when there is none — exactly
    where a renderer given `soft_prompt_text(count) + system_prompt` puts them."""
    slots = soft_prompt_text(count)
    result = list(messages)
    if not result or result[0]["role"] != "system":
        return [{"role": "system", "content": [{"type": "text", "text": slots}]}, *result]
    content = list(result[0]["content"])
    if content and content[0].get("type") == "text":
        content[0] = {**content[0], "text": slots + content[0]["text"]}
    else:
        content.insert(0, {"type": "text", "text": slots})
    result[0] = {**result[0], "content": content}
    return result


def _special_id(tokenizer: Any, token: str, purpose: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != token:
        raise ValueError(f"this tokenizer has no {token!r} token to hold {purpose}")
    return int(token_id)


def placeholder_id(tokenizer: Any) -> int:
    return _special_id(tokenizer, PLACEHOLDER, "image vectors")


def soft_prompt_id(tokenizer: Any) -> int:
    return _special_id(tokenizer, SOFT_PROMPT_SLOT, "soft prompt vectors")


def splice(embeddings: Any, input_ids: Any, placeholder: int, vectors: Any, what: str = "image") -> Any:
    """`embeddings` (batch, tokens, hidden) with the rows at `placeholder` ids replaced by
    `vectors` (count, hidden), row-major: the first placeholder of the first sequence first.
    `what`: the vectors' kind, for the message."""
    mask = input_ids == placeholder
    count = int(mask.sum())
    if count != vectors.shape[0]:
        raise ValueError(f"the prompt holds {count} {what} placeholders but {vectors.shape[0]} {what} vectors were given")
    return embeddings.masked_scatter(mask.unsqueeze(-1), vectors.to(embeddings.dtype))


__all__ = ["PLACEHOLDER", "SOFT_PROMPT_SLOT", "image_text", "placeholder_id", "prefix_soft_prompt", "soft_prompt_id",
           "soft_prompt_text", "splice"]
