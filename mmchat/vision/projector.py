"""The trainable projector: frozen image features -> a language model's embedding space (LLaVA's W_proj).

`Projector(feature_dim, hidden_size)` is LLaVA-1.5's two-layer MLP (Linear, GELU, Linear),
built from `nn.Linear` layers so peft and plain torch treat it like any other module. It maps
`(images, k, feature_dim)` frozen feature tokens to `(images, k, hidden_size)` vectors that
`mmchat.backends.splice` puts where an image's placeholders stand. `save_projector` writes it
as safetensors with its shape in the metadata; `load_projector` reads it back and refuses a
file whose shapes do not fit the base (naming the file, the shapes found and the ones
needed). It does not compute features or train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmchat.errors import UserFacingError

PROJECTOR_FILE = "projector.safetensors"


class Projector(nn.Module):
    def __init__(self, feature_dim: int, hidden_size: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or hidden_size
        self.feature_dim, self.hidden_size = feature_dim, hidden_size
        self.linear_1 = nn.Linear(feature_dim, inner)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(inner, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def save_projector(projector: Projector, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: p.detach().cpu().contiguous() for name, p in projector.state_dict().items()}
    save_file(tensors, str(path), metadata={"feature_dim": str(projector.feature_dim),
                                            "hidden_size": str(projector.hidden_size)})


def load_projector(path: Path, feature_dim: int, hidden_size: int) -> Projector:
    """A projector from `path`, checked against the base's feature size and hidden size."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # not safetensors, truncated, unreadable
        raise UserFacingError(f"{path.name}: not a readable safetensors projector ({err})") from None
    shapes = {key: tuple(value.shape) for key, value in tensors.items()}
    first, second = shapes.get("linear_1.weight"), shapes.get("linear_2.weight")
    if first is None or second is None or len(first) != 2 or len(second) != 2:
        raise UserFacingError(f"{path.name}: expected linear_1 and linear_2 weights; found {sorted(shapes)}")
    if first[1] != feature_dim or second[0] != hidden_size or first[0] != second[1]:
        raise UserFacingError(
            f"{path.name}: a projector from {first[1]}-d features to {second[0]}-d embeddings; this base needs "
            f"{feature_dim}-d features to {hidden_size}-d embeddings")
    projector = Projector(feature_dim, hidden_size, inner=first[0])
    missing, unexpected = projector.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserFacingError(f"{path.name}: tensors missing {missing} or unexpected {unexpected}")
    return projector.eval()


__all__ = ["PROJECTOR_FILE", "Projector", "load_projector", "save_projector"]
