"""Choose and load the chat backend a configuration asks for.

`resolve_preset` applies the config's overrides to a named preset (or picks one for
`auto`: the 4-bit LLaVA preset when CUDA is present, else the offline stand-in).
`load_backend` looks the preset's kind up in `BACKEND_LOADERS` and loads it; for `auto` a GPU
preset whose weights cannot be had falls back to the offline stand-in with a logged reason.
`load_base_copy` loads another copy of a preset's base model (for training and merging,
which must never touch the serving model). Nothing here streams or holds conversations.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

from mmchat.backends.base import Backend
from mmchat.config import GPU_PRESET, OFFLINE_PRESET, PRESETS, ModelConfig, ModelPreset
from mmchat.errors import DuplicateRegistration, ModelUnavailable

log = logging.getLogger(__name__)

BackendLoader = Callable[[ModelPreset, Path], Backend]


def _load_llava(preset: ModelPreset, cache_dir: Path) -> Backend:
    from mmchat.backends.llava import LlavaBackend

    return LlavaBackend.from_preset(preset, cache_dir)


def _load_offline(preset: ModelPreset, cache_dir: Path) -> Backend:
    from mmchat.backends.offline import OfflineBackend

    return OfflineBackend.from_preset(preset, cache_dir)


BACKEND_LOADERS: dict[str, BackendLoader] = {"llava": _load_llava, "tiny": _load_llava, "offline": _load_offline}


def register_backend(kind: str, loader: BackendLoader) -> None:
    if kind in BACKEND_LOADERS:
        raise DuplicateRegistration(f"backend kind {kind!r} is already registered")
    BACKEND_LOADERS[kind] = loader


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_preset(config: ModelConfig) -> ModelPreset:
    name = config.preset
    if name == "auto":
        name = GPU_PRESET if cuda_available() else OFFLINE_PRESET
    preset = PRESETS[name]
    changes = {}
    if config.source:
        changes["source"] = config.source
    if config.quantization:
        changes["quantization"] = config.quantization
    if config.languages:
        changes["languages"] = config.languages
    return dataclasses.replace(preset, **changes) if changes else preset


def loaded_preset(config: ModelConfig, loaded_name: str) -> ModelPreset:
    """The preset of the model that is actually loaded (`BackendInfo.preset`): the configured one
    with its overrides, or the offline stand-in an `auto` fallback loaded instead."""
    preset = resolve_preset(config)
    return preset if preset.name == loaded_name else PRESETS[loaded_name]


def load_backend(config: ModelConfig) -> Backend:
    preset = resolve_preset(config)
    cache_dir = Path(config.cache_dir).expanduser()
    log.info("loading model preset %s from %s", preset.name, preset.source)
    try:
        return BACKEND_LOADERS[preset.kind](preset, cache_dir)
    except ModelUnavailable as err:
        if config.preset != "auto" or preset.name == OFFLINE_PRESET:
            raise
        log.warning("%s -- falling back to the offline stand-in", err)
        return BACKEND_LOADERS["offline"](PRESETS[OFFLINE_PRESET], cache_dir)


def load_base_copy(preset: ModelPreset, cache_dir: Path) -> tuple[Any, Any]:
    """A fresh `(model, tokenizer or processor)` of the preset's base, apart from the serving one.

    Same weights as the backend the preset loads (same seed for the tiny model, the same
    cached conversion for the offline one); training and merging change this copy only.
    """
    cache_dir = Path(cache_dir).expanduser()
    if preset.kind == "offline":
        from mmchat.backends.builtin import load_smollm2

        return load_smollm2(cache_dir)
    if preset.kind == "tiny":
        from mmchat.backends.builtin import build_tiny_llava

        return build_tiny_llava(cache_dir)
    if preset.kind == "llava":
        from mmchat.backends.llava import load_pretrained

        return load_pretrained(preset, cache_dir)
    raise ModelUnavailable(f"preset kind {preset.kind!r} has no base-model loader for training or merging")
