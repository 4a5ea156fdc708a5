"""Learned soft-prompt vectors for the offline composite (prompt tuning, beside LoRA and the projector).

`SoftPrompt(vectors)` holds `n` trainable vectors of the language model's width; the prompt
carries `n` slot tokens at the start of its system message (`mmchat.backends.splice`:
`soft_prompt_text`, `prefix_soft_prompt`) and the vectors are spliced there by position, as
image vectors are at their placeholders. peft refuses prompt tuning and LoRA in one model,
so these are the project's own vectors, saved beside the LoRA files in the adapter folder.
`SoftPrompt.from_vocabulary` starts them as copies of real token embeddings (a common
prompt-tuning initialisation: vectors the model already reads, not noise far off its
embedding scale). `save_soft_prompt` writes safetensors with the shape in the metadata;
`load_soft_prompt` reads it back and refuses an unreadable file, a width other than the
base's, or a length outside 1..`MAX_PROMPT_TOKENS`, naming the file.

It lives in `mmchat.vision` beside `projector.py` because it is the same kind of part — a
trainable torch module whose output is spliced into the offline model's input embeddings and
that an adapter carries as a safetensors file — while `mmchat.adapters` keeps to torch-free
cards, stores and zips. It does not render prompts, splice or train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmchat.errors import UserFacingError

SOFT_PROMPT_FILE = "soft_prompt.safetensors"
MAX_PROMPT_TOKENS = 64  # soft prompt vectors accepted (10-20 is the usual range)
# Byte-level BPE vocabularies number their merges in the order they were learnt, most frequent
# first: ids past the first few hundred (specials, single bytes) up to a few thousand are common
# whole words and word pieces. The initial vectors are drawn from their embeddings.
COMMON_TOKENS = range(300, 5000)


def _check_length(count: int, where: str) -> None:
    if not 1 <= count <= MAX_PROMPT_TOKENS:
        raise UserFacingError(f"{where}: {count} soft prompt vectors; accepted: 1..{MAX_PROMPT_TOKENS}")


class SoftPrompt(nn.Module):
    def __init__(self, vectors: torch.Tensor) -> None:
        """`vectors`: (tokens, hidden_size), copied into a trainable parameter."""
        super().__init__()
        if vectors.dim() != 2:
            raise ValueError(f"soft prompt vectors must be 2-D (tokens, hidden); got shape {tuple(vectors.shape)}")
        _check_length(int(vectors.shape[0]), "a soft prompt")
        self.vectors = nn.Parameter(vectors.detach().clone())

    @classmethod
    def from_vocabulary(cls, embeddings: torch.Tensor, tokens: int, seed: int) -> "SoftPrompt":
        """`tokens` vectors copied from the embedding rows (`embeddings`: vocab x hidden) of
        distinct common vocabulary tokens drawn with `seed`."""
        _check_length(tokens, "a soft prompt")
        high = min(COMMON_TOKENS.stop, embeddings.shape[0])
        low = min(COMMON_TOKENS.start, max(0, high - tokens))
        generator = torch.Generator().manual_seed(seed)
        ids = low + torch.randperm(high - low, generator=generator)[:tokens]
        return cls(embeddings[ids].float())

    @property
    def tokens(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.shape[1])

    def forward(self, sequences: int) -> torch.Tensor:
        """The vectors for `sequences` prompts, each holding one run of slots: (sequences * tokens, hidden)."""
        return self.vectors.repeat(sequences, 1)


def save_soft_prompt(prompt: SoftPrompt, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"vectors": prompt.vectors.detach().cpu().contiguous()}, str(path),
              metadata={"tokens": str(prompt.tokens), "hidden_size": str(prompt.hidden_size)})


def load_soft_prompt(path: Path, hidden_size: int) -> SoftPrompt:
    """A soft prompt from `path`, checked against the base's hidden size and the accepted length."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # not safetensors, truncated, unreadable
        raise UserFacingError(f"{path.name}: not a readable safetensors soft prompt ({err}); accepted: the file "
                              "save_soft_prompt writes") from None
    vectors = tensors.get("vectors")
    if vectors is None or len(tensors) != 1 or vectors.dim() != 2:
        shapes = {key: tuple(value.shape) for key, value in tensors.items()}
        raise UserFacingError(f"{path.name}: expected one 2-D tensor 'vectors' (tokens, width); found {shapes}")
    if vectors.shape[1] != hidden_size:
        raise UserFacingError(f"{path.name}: soft prompts of width {vectors.shape[1]}; this base needs {hidden_size}")
    _check_length(int(vectors.shape[0]), path.name)
    if not vectors.is_floating_point() or not torch.isfinite(vectors).all():
        raise UserFacingError(f"{path.name}: soft prompt vectors must be finite floating-point numbers")
    return SoftPrompt(vectors.float())


__all__ = ["MAX_PROMPT_TOKENS", "SOFT_PROMPT_FILE", "SoftPrompt", "load_soft_prompt", "save_soft_prompt"]
