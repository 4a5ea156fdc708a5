"""Batches of encoded examples: right-padded ids, attention mask, labels padded with -100.

`collate(batch, pad_id)` stacks `Encoded` examples into the tensors a causal LM takes (and,
for examples that carry image feature tokens, `image_features`: all of the batch's images in
row order, as `mmchat.backends.splice` places them; for LLaVA examples with images, their
`pixel_values` in the same order).
`answer_positions(labels)` names the sequence positions whose next token is an answer token,
so the engine computes the vocabulary projection only there (most of each example is the
shared prompt). It does not tokenize, shuffle or move tensors to a device.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmchat.training.examples import IGNORE, Encoded


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    features = [e.features for e in batch if getattr(e, "features", None) is not None]
    if features:  # image feature tokens, in prompt order (first row's images first), for the splice
        tensors["image_features"] = torch.cat(features)
    pixels = [e.pixel_values for e in batch if getattr(e, "pixel_values", None) is not None]
    if pixels:  # a LLaVA example's images (mmchat.training.pixels), in prompt order like the features
        tensors["pixel_values"] = torch.cat(pixels)
    return tensors


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sorted positions t (any row) where labels[:, t + 1] is counted: the logits the loss needs."""
    counted = (labels[:, 1:] != IGNORE).any(dim=0)
    return torch.nonzero(counted, as_tuple=False).flatten()
