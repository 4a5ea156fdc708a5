"""Choose and load the image encoder an `EncoderConfig` asks for.

- `standin`: the offline `StandInEncoder` (EfficientNet-Lite0 labels + all-MiniLM-L6-v2).
- `open_clip`: `OpenClipEncoder`; when its weights cannot be had, `ModelUnavailable` propagates.
- `auto`: open_clip if its weights are already on this machine (Hugging Face cache or a
  `local-dir:` folder), else the stand-in. It never starts a download, so start-up time does
  not depend on the network; a user who wants CLIP downloaded asks for `open_clip`.

An unknown open_clip architecture or tag is a `ConfigError` whatever the kind: a typo should be
fixed, not silently replaced by the stand-in. Nothing heavy is imported until an encoder is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmchat.config import EncoderConfig
from mmchat.errors import ModelUnavailable
from mmchat.vision.base import ImageEncoder

log = logging.getLogger(__name__)


def load_image_encoder(config: EncoderConfig, *, cache_dir: Path, device: str = "cpu") -> ImageEncoder:
    """The encoder `config.kind` names (see the module docstring for how `auto` decides)."""
    if config.kind == "standin":
        return _stand_in(cache_dir, device)
    from mmchat.vision.openclip import OpenClipEncoder, resolve_source

    if config.kind == "open_clip":
        return OpenClipEncoder(config.model, config.pretrained, device=device)

    source = resolve_source(config.model, config.pretrained)
    if source.cached_weights() is None:
        log.info(
            "image encoder: using the offline stand-in because the weights for %s are not on "
            "this machine (choose encoder kind 'open_clip' to download them)",
            source.description,
        )
        return _stand_in(cache_dir, device)
    try:
        return OpenClipEncoder(config.model, config.pretrained, device=device)
    except ModelUnavailable as err:
        log.warning("image encoder: using the offline stand-in because %s", err)
        return _stand_in(cache_dir, device)


def _stand_in(cache_dir: Path, device: str) -> ImageEncoder:
    from mmchat.vision.standin import StandInEncoder

    return StandInEncoder(cache_dir=cache_dir, device=device)
