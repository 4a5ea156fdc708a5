"""Shared test set-up: nothing may download, so hub access is switched off for every test.

Fixtures that build models live with the tests that use them (or in `tests/fixtures.py`);
this file only fixes the environment and offers the real photos the tests talk about.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cat_image():
    """A real photo of a cat (scikit-image's `chelsea`), as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="session")
def coffee_image():
    """A real photo of a cup of coffee (scikit-image's `coffee`), as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="session")
def model_cache_dir():
    """Where converted weights are cached across tests (and across runs, to save time)."""
    from pathlib import Path

    path = Path(os.environ.get("MMCHAT_CACHE_DIR", "~/.cache/mmchat")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_backend(model_cache_dir):
    """The tiny random LLaVA (built from configs) behind the real transformers backend."""
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    return LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)


@pytest.fixture(scope="session")
def offline_backend(model_cache_dir):
    """The offline stand-in on real shipped weights (SmolLM2-135M + EfficientNet-Lite0)."""
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS

    return OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)


@pytest.fixture(scope="session")
def standin_encoder(model_cache_dir):
    from mmchat.config import EncoderConfig
    from mmchat.vision import load_image_encoder

    return load_image_encoder(EncoderConfig(kind="standin"), cache_dir=model_cache_dir)
