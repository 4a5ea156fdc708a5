"""Real CLIP through open_clip, from an open_clip tag, a Hugging Face Hub repo or a local folder.

`pretrained` (see `EncoderConfig`) names the weights in one of three ways:

- an open_clip tag such as `laion2b_s34b_b79k`, with `model` the architecture (`ViT-B-32`);
  the weights come from the Hub repo open_clip's pretrained table names for that pair;
- `hf-hub:ORG/NAME`, a Hub repo holding `open_clip_config.json` and the weights;
- `local-dir:PATH`, a folder holding the same two files.

Only safetensors weights are loaded (pickled `.bin`/`.pth` checkpoints are refused), and this
module decides which file is read: open_clip builds the architecture without weights and the
chosen safetensors file is loaded into it. `OpenClipSource.cached_weights()` answers, without
network, whether the weights are already on this machine (the `auto` encoder choice uses it).

Where weights cannot be had (offline and not cached), loading raises `ModelUnavailable` naming
the source. This module does not pick a fallback; `mmchat.vision.factory` does. torch and
open_clip are imported only when a source is resolved or a model is loaded.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmchat.errors import ConfigError, ModelUnavailable
from mmchat.vision.base import ImageEncoder, as_rgb, bounded_aspect, l2_normalize

log = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
# Preferred names first, as open_clip's own Hub exports and local folders use them.
SAFE_WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
BATCH_SIZE = 32

WHAT_TO_DO = (
    "run once with internet access so the weights are cached, point `pretrained` at "
    "'local-dir:PATH' (a folder with open_clip_config.json and open_clip_model.safetensors), "
    "or pass --encoder standin"
)


def _safetensors_name_for(hub_filename: str) -> str:
    """The safetensors file that stands for a Hub checkpoint name (open_clip's own rule)."""
    if not hub_filename or hub_filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors"
    if hub_filename.endswith(".safetensors"):
        return hub_filename
    stem, _ = os.path.splitext(hub_filename)
    return f"{stem}.safetensors"


def _safetensors_in(folder: Path) -> Path | None:
    for name in SAFE_WEIGHTS_NAMES:
        if (folder / name).is_file():
            return folder / name
    others = sorted(folder.glob("*.safetensors"))
    return others[0] if others else None


def _cached_hub_file(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    # Besides a path or None it can return a marker meaning "known to be absent upstream".
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class OpenClipSource:
    """Where one open_clip model's config and safetensors weights come from."""

    scheme: str  # "tag", "hf-hub" or "local-dir"
    model: str  # open_clip architecture name (tags only; a repo or folder carries its own)
    pretrained: str  # as configured
    repo_id: str = ""
    weights_filename: str = ""
    local_dir: Path | None = None
    tag_config: tuple[tuple[str, object], ...] = ()

    @property
    def description(self) -> str:
        if self.scheme == "tag":
            return f"open_clip {self.model} / {self.pretrained}"
        return f"open_clip {self.pretrained}"

    def cached_weights(self) -> Path | None:
        """The weights file if this machine already has it (and the config); never downloads."""
        if self.scheme == "local-dir":
            assert self.local_dir is not None
            if not (self.local_dir / CONFIG_NAME).is_file():
                return None
            return _safetensors_in(self.local_dir)
        if self.scheme == "hf-hub" and _cached_hub_file(self.repo_id, CONFIG_NAME) is None:
            return None
        return _cached_hub_file(self.repo_id, self.weights_filename)

    def fetch_weights(self) -> Path:
        """The weights file, downloading it when the Hub is reachable; ModelUnavailable if not."""
        if self.scheme == "local-dir":
            return self._local_weights()
        from huggingface_hub import hf_hub_download

        wanted = [CONFIG_NAME, self.weights_filename] if self.scheme == "hf-hub" else [self.weights_filename]
        paths = []
        for filename in wanted:
            try:
                paths.append(Path(hf_hub_download(self.repo_id, filename)))
            except Exception as err:  # offline, unknown repo, missing file, HTTP errors alike
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ModelUnavailable(
                    f"cannot load {self.description}: {filename} from Hugging Face Hub repo "
                    f"{self.repo_id!r} is not available here ({type(err).__name__}: {reason}). "
                    f"Only safetensors weights are loaded. To fix: {WHAT_TO_DO}."
                ) from err
        return paths[-1]

    def _local_weights(self) -> Path:
        folder = self.local_dir
        assert folder is not None
        if not folder.is_dir():
            raise ModelUnavailable(f"cannot load {self.description}: folder {str(folder)!r} does not exist")
        if not (folder / CONFIG_NAME).is_file():
            raise ModelUnavailable(
                f"cannot load {self.description}: {str(folder)!r} has no {CONFIG_NAME} "
                "(open_clip's model config with a 'model_cfg' entry)"
            )
        weights = _safetensors_in(folder)
        if weights is not None:
            return weights
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelUnavailable(
                f"cannot load {self.description}: {str(folder)!r} holds only pickled weights "
                f"({', '.join(pickles)}), which are refused because unpickling can run code. "
                "Convert them once to open_clip_model.safetensors (safetensors.torch.save_file "
                "of the state dict) and try again."
            )
        raise ModelUnavailable(
            f"cannot load {self.description}: {str(folder)!r} has no weights; "
            f"expected one of {', '.join(SAFE_WEIGHTS_NAMES)}"
        )


def resolve_source(model: str, pretrained: str) -> OpenClipSource:
    """Work out where `model`/`pretrained` (as in `EncoderConfig`) would be loaded from.

    ConfigError for an unknown architecture or tag (listing the valid ones); ModelUnavailable
    for a tag open_clip only knows as a pickled URL download.
    """
    pretrained = pretrained.strip()
    if pretrained.startswith("local-dir:"):
        path = pretrained.removeprefix("local-dir:").strip()
        if not path:
            raise ConfigError("encoder source 'local-dir:' names no folder; write 'local-dir:/path/to/model'")
        return OpenClipSource("local-dir", model, pretrained, local_dir=Path(path).expanduser())
    if pretrained.startswith("hf-hub:"):
        repo_id = pretrained.removeprefix("hf-hub:").strip().strip("/")
        if repo_id.count("/") != 1:
            raise ConfigError(f"encoder source {pretrained!r} is not valid; write it as 'hf-hub:ORG/NAME'")
        return OpenClipSource("hf-hub", model, pretrained, repo_id=repo_id, weights_filename=SAFE_WEIGHTS_NAMES[0])

    import open_clip

    architecture = model.replace("/", "-")
    known_models = open_clip.list_models()
    if architecture not in known_models:
        close = difflib.get_close_matches(architecture, known_models, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise ConfigError(f"open_clip model {model!r} is not known{hint}")
    tag_config = open_clip.get_pretrained_cfg(architecture, pretrained)
    if not tag_config:
        tags = open_clip.list_pretrained_tags_by_model(architecture)
        raise ConfigError(
            f"open_clip has no pretrained weights {pretrained!r} for {architecture}; "
            f"valid tags: {', '.join(tags) or '(none)'}; or use 'hf-hub:ORG/NAME' or 'local-dir:PATH'"
        )
    hub_entry = tag_config.get("hf_hub", "")
    if not hub_entry:
        raise ModelUnavailable(
            f"cannot load open_clip {architecture} / {pretrained}: open_clip lists these weights only "
            "as a pickled download from a URL, which is refused; use a tag with a Hugging Face Hub "
            "entry, 'hf-hub:ORG/NAME' or 'local-dir:PATH' with safetensors weights"
        )
    # Entries read 'org/name/' (default file name) or 'org/name/file.bin'.
    repo_id, hub_filename = os.path.split(hub_entry)
    return OpenClipSource(
        "tag",
        architecture,
        pretrained,
        repo_id=repo_id.strip("/"),
        weights_filename=_safetensors_name_for(hub_filename),
        tag_config=tuple(sorted(tag_config.items())),
    )


class _DropRandomInitWarnings(logging.Filter):
    """open_clip warns 'initialized randomly' because weights are loaded after it builds the
    architecture; the warning is false here and would alarm whoever reads the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("No pretrained weights loaded for model")
            or message.startswith("Local config loaded, but no CLIP weights found")
        )


class OpenClipEncoder(ImageEncoder):
    """An open_clip CLIP model, frozen and in eval mode; safe to call from several threads."""

    is_stand_in = False

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", *, device: str = "cpu") -> None:
        super().__init__()
        started = time.perf_counter()
        self.source = resolve_source(model, pretrained)
        weights = self.source.fetch_weights()

        import open_clip
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.name = self.source.description
        self.weights_path = weights
        self._model, self._preprocess, self._tokenizer = self._build(open_clip, weights)
        self.logit_scale = float(self._model.logit_scale.exp().item())
        self.dim = int(self.encode_texts(["a photo"]).shape[1])
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s from %s in %.1f s", self.name, weights, self.load_seconds)

    def _build(self, open_clip, weights: Path):
        source = self.source
        tag_config = dict(source.tag_config)
        if source.scheme == "tag":
            architecture, tokenizer_name = source.model, source.model
        elif source.scheme == "hf-hub":
            # The cached snapshot is read as a local folder so open_clip itself reaches for
            # nothing on the network; the tokenizer may still live in another Hub repo.
            architecture, tokenizer_name = f"local-dir:{weights.parent}", source.pretrained
        else:
            architecture = tokenizer_name = f"local-dir:{source.local_dir}"
        # open_clip logs through the root logger.
        quiet = _DropRandomInitWarnings()
        logging.getLogger().addFilter(quiet)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture,
                pretrained=None,
                load_weights=False,
                pretrained_image=False,
                pretrained_text=False,
                # Tags trained with QuickGELU (e.g. OpenAI's) need it in the architecture too;
                # open_clip only warns about the mismatch when the weights come from a file.
                force_quick_gelu=bool(tag_config.get("quick_gelu", False)),
                image_mean=tag_config.get("mean"),
                image_std=tag_config.get("std"),
                image_interpolation=tag_config.get("interpolation"),
                image_resize_mode=tag_config.get("resize_mode"),
                device=self.device,
            )
            open_clip.load_checkpoint(model, str(weights), strict=True, device="cpu")
            tokenizer = open_clip.get_tokenizer(tokenizer_name)
        except ModelUnavailable:
            raise
        except Exception as err:
            raise ModelUnavailable(
                f"cannot load {source.description} from {str(weights)!r}: {type(err).__name__}: {err}"
            ) from err
        finally:
            logging.getLogger().removeFilter(quiet)
        model.requires_grad_(False)
        return model.eval().to(self.device), preprocess, tokenizer

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if isinstance(images, Image.Image):
            raise TypeError("pass a list of images, not a single image")
        rows = []
        with self._torch.no_grad():
            for start in range(0, len(images), BATCH_SIZE):
                pixels = self._torch.stack([self._preprocess(as_rgb(bounded_aspect(im))) for im in images[start : start + BATCH_SIZE]])
                rows.append(self._model.encode_image(pixels.to(self.device)).float().cpu().numpy())
        return l2_normalize(np.concatenate(rows)) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        rows = []
        with self._torch.no_grad():
            for start in range(0, len(texts), BATCH_SIZE * 8):
                tokens = self._tokenizer(list(texts[start : start + BATCH_SIZE * 8]))
                rows.append(self._model.encode_text(tokens.to(self.device)).float().cpu().numpy())
        return l2_normalize(np.concatenate(rows)) if rows else np.zeros((0, self.dim), dtype=np.float32)

