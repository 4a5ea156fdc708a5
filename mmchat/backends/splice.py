"""Vectors spliced into a language model's input embeddings by position, LLaVA-style.

An image reaches the offline language model as `k` vectors (frozen image features through a
trained projector) standing where the prompt holds `k` placeholder tokens. The placeholder is
an existing special token of the vocabulary that chat text never carries (`PLACEHOLDER`,
SmolLM2's `<filename>`: made inert in user text like every special token), so no token is
added to the vocabulary and the base's fingerprint — and every adapter trained on it — stays
valid. `image_text(number, k)` is what an image becomes in the prompt; `splice(embeddings,
input_ids, placeholder_id, vectors)` puts the vectors where the placeholders are, in order,
and refuses a count that does not match. One function for serving and for training, so an
adapter sees at train time exactly what chat sends. It does not compute features or project
them (see `mmchat.vision.features` and `mmchat.vision.projector`).
"""

from __future__ import annotations

from typing import Any

PLACEHOLDER = "<filename>"  # SmolLM2's special token 6 (StarCoder's metadata tokens: never in chat)


def image_text(number: int, k: int) -> str:
    """The prompt text of image `number`: a bracketed label around its `k` placeholders."""
    return f"[Image {number}: {PLACEHOLDER * k}]"


def placeholder_id(tokenizer: Any) -> int:
    token_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != PLACEHOLDER:
        raise ValueError(f"this tokenizer has no {PLACEHOLDER!r} token to hold image vectors")
    return int(token_id)


def splice(embeddings: Any, input_ids: Any, placeholder: int, vectors: Any) -> Any:
    """`embeddings` (batch, tokens, hidden) with the rows at `placeholder` ids replaced by
    `vectors` (count, hidden), row-major: the first placeholder of the first sequence first."""
    mask = input_ids == placeholder
    count = int(mask.sum())
    if count != vectors.shape[0]:
        raise ValueError(f"the prompt holds {count} image placeholders but {vectors.shape[0]} image vectors were given")
    return embeddings.masked_scatter(mask.unsqueeze(-1), vectors.to(embeddings.dtype))


__all__ = ["PLACEHOLDER", "image_text", "placeholder_id", "splice"]
