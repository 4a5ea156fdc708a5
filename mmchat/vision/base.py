"""The one interface every image encoder implements, and the pieces all of them share.

`ImageEncoder` puts images and texts into one normalised embedding space (CLIP-style): cosine
similarity is a dot product, zero-shot classification is a softmax over scaled similarities
between an image and the prompts "a photo of a {label}", and `describe` ranks the ImageNet-1k
class names. Subclasses only implement `encode_images` and `encode_texts`; prompt wording,
normalisation, softmax and top-k ranking live here so they are the same for every encoder.

This module loads no model and imports no torch: it is safe to import from UI and config code.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image

PROMPT_TEMPLATE = "a photo of a {label}"


def prompt_for(label: str) -> str:
    """The zero-shot prompt CLIP was evaluated with, e.g. 'a photo of a cat'."""
    return PROMPT_TEMPLATE.format(label=label)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32; all-zero rows stay zero instead of turning NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum so large logit scales cannot overflow."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ranked(labels: Sequence[str], probs: np.ndarray, top_k: int | None = None) -> list[tuple[str, float]]:
    """`(label, probability)` pairs, most probable first, cut to `top_k` when given."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for all labels), got {top_k}")
    order = np.argsort(-np.asarray(probs), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [(labels[i], float(probs[i])) for i in order]


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels stripped of surrounding space; ValueError for none, blank or repeated ones."""
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of strings, not one string ({labels!r})")
    cleaned = [str(label).strip() for label in labels]
    if not cleaned:
        raise ValueError("zero-shot classification needs at least one label; got an empty list")
    if any(not label for label in cleaned):
        raise ValueError(f"labels must not be blank; got {list(labels)!r}")
    repeated = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if repeated:
        raise ValueError(f"labels must be distinct; repeated: {repeated}")
    return cleaned


def as_rgb(image: Image.Image) -> Image.Image:
    """Every encoder expects 3-channel input; palette, grey and alpha images are converted."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


# Encoders resize an image's short side to their input size (224-336 px) and centre-crop;
# a 16000 x 1 strip would be resized to 224 x 3.6 million pixels first (gigabytes, seconds).
MAX_ASPECT_RATIO = 20.0


def bounded_aspect(image: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """`image` with its long side centre-cropped to at most `max_ratio` x its short side.

    Shortest-side resizing followed by a centre crop (what the encoders here do) only ever
    looks at the central part of the long side, so for them the crop changes nothing but the
    cost; images within the ratio are returned as they are. Uploads beyond
    `UploadLimits.max_aspect_ratio` are refused earlier; this guards direct callers.
    """
    width, height = image.size
    short = max(min(width, height), 1)
    keep = int(short * max_ratio)
    if max(width, height) <= keep:
        return image
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


_imagenet_labels: tuple[str, ...] | None = None


def imagenet_labels() -> tuple[str, ...]:
    """The ImageNet-1k class names as cleaned up for CLIP (open_clip's list), without repeats.

    Two names occur twice in that list ('missile', 'sunglasses' name two classes each), so
    the vocabulary has 998 entries; `ImageNetClassifier` merges those classes the same way.
    """
    global _imagenet_labels
    if _imagenet_labels is None:
        # open_clip's metadata module is plain Python; importing it pulls in open_clip (torch),
        # which is why this is deferred until a vocabulary is actually needed.
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        _imagenet_labels = tuple(dict.fromkeys(IMAGENET_CLASSNAMES))
    return _imagenet_labels


class ImageEncoder(ABC):
    """Images and texts in one L2-normalised space, with zero-shot labels on top."""

    name: str
    is_stand_in: bool = False
    dim: int
    # Multiplies cosine similarities before the softmax. CLIP learns ~100; encoders whose
    # similarities are spread differently set their own so probabilities stay informative.
    logit_scale: float = 100.0

    def __init__(self) -> None:
        self._vocabulary_lock = threading.Lock()
        self._vocabulary_features: np.ndarray | None = None

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """`(n, dim)` float32, one L2-normalised row per image."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, dim)` float32 in the same space as `encode_images`, rows L2-normalised."""

    def zero_shot(
        self, image: Image.Image, labels: Sequence[str], top_k: int | None = None
    ) -> list[tuple[str, float]]:
        """Probabilities of 'a photo of a {label}' for each label, most probable first.

        The probabilities sum to 1 over all `labels`; `top_k` only shortens the returned list.
        """
        labels = check_labels(labels)
        label_features = self.encode_texts([prompt_for(label) for label in labels])
        return self._rank(image, labels, label_features, top_k)

    def describe(self, image: Image.Image, top_k: int = 3) -> list[tuple[str, float]]:
        """The best ImageNet-1k class names for `image`, as zero-shot over that vocabulary."""
        return self._rank(image, imagenet_labels(), self._vocabulary_text_features(), top_k)

    def _rank(
        self,
        image: Image.Image,
        labels: Sequence[str],
        label_features: np.ndarray,
        top_k: int | None,
    ) -> list[tuple[str, float]]:
        image_features = self.encode_images([image])[0]
        probs = softmax(self.logit_scale * (label_features @ image_features))
        return ranked(labels, probs, top_k)

    def _vocabulary_text_features(self) -> np.ndarray:
        # Embedding a thousand prompts takes seconds, so it is done once, on first use, and
        # under a lock so concurrent first requests do not each compute it.
        with self._vocabulary_lock:
            if self._vocabulary_features is None:
                prompts = [prompt_for(label) for label in imagenet_labels()]
                self._vocabulary_features = self.encode_texts(prompts)
            return self._vocabulary_features

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
