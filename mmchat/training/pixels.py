"""LLaVA training examples with real pixels: what the projector and vision-tower targets learn from.

`PixelRenderer` is the engine's `Renderer` for LLaVA kinds. An example with `images` (paths
of validated image copies, as `mmchat.training.datasets` writes them) is rendered exactly as
`LlavaBackend.prepare` renders a chat turn with photos: the processor's chat template, then
the processor with the images, which expands each image placeholder into the image tokens
the model fills with projected vision features. The labels stay answer-only (image tokens
are prompt, -100), and the example carries its `pixel_values` (`PixelEncoded`), which
`collate` stacks and `answer_loss` hands to the model. Examples without images encode as the
plain `Renderer` encodes them, token for token.

`prompt_ids` expands the image tokens too and `pixel_values(example)` gives the pixels, so the
engine's sample answers read the pictures. It does not touch the offline model (its images become features through `mmchat.training.visual`) or the
`image_labels` examples (offline only, refused as before).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterator

from mmchat.training.examples import Encoded, Example, Renderer, image_describer


@dataclass(frozen=True)
class PixelEncoded(Encoded):
    pixel_values: Any = None  # (images, channels, height, width), the example's images in prompt order


class PixelRenderer(Renderer):
    """A LLaVA-kind `Renderer` that encodes examples with images (see the module docstring)."""

    def __init__(self, kind: str, processor: Any, system_prompt: str, max_length: int = 256, limits: Any = None) -> None:
        if kind == "offline":
            raise ValueError("PixelRenderer renders for LLaVA kinds; the offline model uses Renderer")
        super().__init__(kind, processor, system_prompt, max_length)
        # `image_describer` opens and re-validates each copy as chat opens an attachment; a
        # "pathway" that returns the images themselves makes it an image loader.
        self._open = image_describer(SimpleNamespace(render=list), limits)
        self._images: list[Any] = []  # the images of the example being encoded

    def image_texts(self, example: Example) -> list[str]:
        if example.images and not example.image_labels:
            return []  # the images reach the model as pixels, not text
        return super().image_texts(example)

    def pixel_images(self, count: int) -> list[Any] | None:
        return self._images[:count] or None

    @contextlib.contextmanager
    def _opened(self, example: Example) -> Iterator[None]:
        """The example's images open for `pixel_images` while its ids are rendered."""
        self._images = self._open(list(example.images)) if example.images else []
        try:
            yield
        finally:
            self._images = []

    def pixel_values(self, example: Example) -> Any:
        """The example's images as the processor gives them to the model (None without images)."""
        if not example.images:
            return None
        images = self._open(list(example.images))
        return self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def prompt_ids(self, example: Example, answer: str | None = None) -> list[int]:
        with self._opened(example):
            return super().prompt_ids(example, answer)

    def _encode(self, example: Example) -> Encoded:
        if not example.images:
            return super()._encode(example)
        with self._opened(example):
            encoded = super()._encode(example)
        return PixelEncoded(encoded.input_ids, encoded.labels, self.pixel_values(example))


__all__ = ["PixelEncoded", "PixelRenderer"]
