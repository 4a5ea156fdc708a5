"""Image encoders: images and texts in one normalised space, plus zero-shot labels.

`ImageEncoder` is the interface; `load_image_encoder(EncoderConfig, cache_dir=...)` picks the
implementation: open_clip CLIP (`mmchat.vision.openclip`) where its weights exist, else the
offline stand-in (`mmchat.vision.standin`, EfficientNet-Lite0 labels embedded with MiniLM).
`mmchat.vision.imagenet.ImageNetClassifier` also gives the frozen image features the offline
chat backend projects into its language model. Importing this package loads no torch.
"""

from mmchat.vision.base import ImageEncoder
from mmchat.vision.factory import load_image_encoder

__all__ = ["ImageEncoder", "load_image_encoder"]
