"""The offline model learns to see: LoRA + a projector over frozen image features, through the engine's loop.

`VisualLM(lm, projector, placeholder)` is the LLaVA-style composite for the offline base:
each image's frozen feature tokens (`mmchat.vision.features`: a 4x4 grid of EfficientNet-Lite0
features, the pooled feature and a colour token) go through the trainable `Projector` and are
spliced (`mmchat.backends.splice`) where the prompt holds that image's placeholders; the
language model (SmolLM2, with LoRA layers) reads them as input embeddings. `VisualRenderer`
renders examples exactly as the text ones (the engine's `Renderer`, chat's template and
system prompt), each photo as `image_text` instead of its label line, and attaches each
example's features to its encoding (`VisualEncoded`), so the engine's collator and answer-only
loss take them unchanged. `train_visual` runs the engine's `run_loop` (seeded, checkpoints,
stop, per-step events) with two learning rates (the projector's higher: colour is learnt only
with it), then `evaluate_visual` asks held-out questions greedily — the adapter through the
composite, the base through today's label pathway — and scores exact match per skill.

`publish_visual` writes the result as a visual adapter (LoRA files, `projector.safetensors`,
a card naming it), which the offline backend serves per message. What it does not do yet
(issue 13, next steps): prompt tuning, LLaVA targets, the Fine-tune tab's visual preset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mmchat.backends.splice import PLACEHOLDER, image_text, placeholder_id, splice
from mmchat.errors import UserFacingError
from mmchat.training.config import TrainingConfig
from mmchat.training.examples import Encoded, Example, Renderer
from mmchat.vision.projector import Projector


@dataclasses.dataclass(frozen=True)
class VisualEncoded(Encoded):
    features: Any = None  # (images, k, feature_dim): this example's images, in prompt order


class VisualLM(nn.Module):
    """A language model reading projected image features where the placeholders stand."""

    def __init__(self, lm: nn.Module, projector: Projector, placeholder: int) -> None:
        super().__init__()
        self.lm, self.projector, self.placeholder = lm, projector, placeholder

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.lm.get_input_embeddings()(input_ids)
        if image_features is None or image_features.numel() == 0:
            return embeddings
        vectors = self.projector(image_features.to(embeddings.dtype)).reshape(-1, embeddings.shape[-1])
        return splice(embeddings, input_ids, self.placeholder, vectors)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_features: torch.Tensor | None = None,
                logits_to_keep: Any = 0) -> Any:
        return self.lm(inputs_embeds=self.embed(input_ids, image_features), attention_mask=attention_mask,
                       logits_to_keep=logits_to_keep)

    def optimizer_groups(self, learning_rate: float, projector_learning_rate: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: the LoRA weights at `learning_rate`, the projector at its own."""
        projector = [p for p in self.projector.parameters() if p.requires_grad]
        ids = {id(p) for p in projector}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": projector, "lr": projector_learning_rate}]
        return ([{"params": rest, "lr": learning_rate}] if rest else []) + groups

    @torch.no_grad()
    def answer(self, input_ids: list[int], image_features: torch.Tensor | None, tokenizer: Any, eos_id: int,
               max_new_tokens: int = 16) -> str:
        ids = torch.tensor([input_ids])
        embeddings = self.embed(ids, image_features)
        out = self.lm.generate(inputs_embeds=embeddings, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                               pad_token_id=tokenizer.pad_token_id or eos_id)
        return tokenizer.decode(out[0], skip_special_tokens=True).strip()


class VisualRenderer:
    """Examples with real photos rendered for the composite: placeholders where each photo stands."""

    def __init__(self, tokenizer: Any, system_prompt: str, features: Any, max_length: int = 256) -> None:
        self.features = features
        k = features.tokens_per_image
        self.renderer = Renderer("offline", tokenizer, system_prompt, max_length,
                                 describe=lambda paths: [image_text(i + 1, k) for i in range(len(paths))])
        self.tokenizer = self.renderer.tokenizer
        self.placeholder = placeholder_id(self.tokenizer)
        self._cache: dict[str, torch.Tensor] = {}

    def image_features(self, paths: Sequence[str]) -> torch.Tensor:
        from PIL import Image

        missing = [p for p in dict.fromkeys(paths) if p not in self._cache]
        if missing:
            images = []
            for path in missing:
                try:
                    with Image.open(path) as image:
                        images.append(image.convert("RGB"))
                except (OSError, ValueError) as err:
                    raise UserFacingError(f"{Path(path).name}: not a readable image ({err})") from None
            for path, tokens in zip(missing, self.features.encode(images)):
                self._cache[path] = tokens
        if not paths:
            return torch.zeros(0, self.features.tokens_per_image, self.features.feature_dim)
        return torch.stack([self._cache[p] for p in paths])

    def _check(self, example: Example) -> None:
        texts = [example.question, example.answer, *(text for _, text in example.turns)]
        if any(PLACEHOLDER in text for text in texts):
            raise UserFacingError(f"an example's text holds {PLACEHOLDER!r}, which stands for image vectors "
                                  f"(question: {example.question[:60]!r})")

    def encode(self, example: Example) -> VisualEncoded:
        self._check(example)
        encoded = self.renderer.encode(example)
        return VisualEncoded(encoded.input_ids, encoded.labels, self.image_features(list(example.images)))

    def prompt(self, example: Example) -> tuple[list[int], torch.Tensor]:
        self._check(example)
        return self.renderer.prompt_ids(example), self.image_features(list(example.images))


def build_visual_model(lm: nn.Module, tokenizer: Any, features: Any, seed: int) -> VisualLM:
    """The composite with a fresh projector (seeded) from the features' width to the LM's."""
    hidden = lm.get_input_embeddings().weight.shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = Projector(features.feature_dim, hidden)
    return VisualLM(lm, projector, placeholder_id(tokenizer))


def train_visual(
    model: VisualLM,
    renderer: VisualRenderer,
    examples: Sequence[Example],
    config: TrainingConfig,
    projector_learning_rate: float = 3e-3,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: Path | None = None,
) -> list[float]:
    """Train the composite in place through the engine's loop; the loss of every step."""
    from mmchat.training.engine import run_loop

    encoded = [renderer.encode(example) for example in examples]
    pad = renderer.tokenizer.pad_token_id if renderer.tokenizer.pad_token_id is not None else renderer.renderer.eos_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return run_loop(model, encoded, config, pad, progress, stop, checkpoints=checkpoints, on_event=on_event,
                        groups=model.optimizer_groups(config.learning_rate, projector_learning_rate))


def publish_visual(
    model: VisualLM, store: Any, config: TrainingConfig, *, base_model: str, tokenizer: Any, features: Any,
    metrics: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None,
    examples: list[dict[str, str]] | None = None,
) -> Any:
    """Publish the trained composite as a visual adapter: peft's LoRA files, `projector.safetensors`
    and a card whose `projector` entry names it (what `AdapterHost` and the offline backend load).
    `base_model`: the base's source for the card. Returns the `StoredAdapter`."""
    import tempfile

    from mmchat.adapters.card import AdapterCard, base_fingerprint
    from mmchat.training.engine import copy_peft_files, lora_targets
    from mmchat.vision.projector import PROJECTOR_FILE, save_projector

    lm = model.lm
    if not hasattr(lm, "peft_config"):
        raise UserFacingError("only a composite with LoRA layers publishes as an adapter (a projector alone does not yet)")
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    card = AdapterCard(
        name=config.name, description=config.description, task=config.task, base_model=base_model,
        base_fingerprint=base_fingerprint(lm.get_base_model().config.to_dict(), text_tokenizer.get_vocab()),
        rank=config.rank, alpha=float(config.alpha),
        target_modules=lora_targets(lm),
        chat_template=text_tokenizer.chat_template or "", dataset=dataset or {}, metrics=metrics or {},
        examples=examples or [],
        projector={"file": PROJECTOR_FILE, "feature_spec": dataclasses.asdict(features.spec),
                   "tokens_per_image": features.tokens_per_image, "feature_dim": features.feature_dim},
    )
    with tempfile.TemporaryDirectory(prefix=".mmchat-visual-") as tmp:
        folder = Path(tmp) / config.name
        lm.save_pretrained(str(folder), safe_serialization=True)

        def write_weights(staging: Path) -> None:
            copy_peft_files(folder, staging)
            save_projector(model.projector, staging / PROJECTOR_FILE)

        return store.publish(card, write_weights)


def evaluate_visual(
    model: VisualLM, renderer: VisualRenderer, examples: Sequence[Example], *, base: bool = False,
    describe: Callable[[list[str]], list[str]] | None = None, max_new_tokens: int = 12,
) -> tuple[dict[str, float], list[str]]:
    """Held-out exact match per skill (`example.kind`) and the replies, greedy.

    `base=True` asks the base as chat does today: LoRA off, each photo as the label line
    `describe(paths)` writes (the offline pathway), no projector.
    """
    from mmchat.training.metrics import exact_match

    replies = []
    model.eval()
    lm = model.lm
    disable = getattr(lm, "disable_adapter", None)
    for example in examples:
        if base:
            text_renderer = Renderer("offline", renderer.tokenizer, renderer.renderer.system_prompt,
                                     renderer.renderer.max_length, describe=describe)
            ids = text_renderer.prompt_ids(example)
            with (disable() if disable is not None else contextlib.nullcontext()):
                replies.append(model.answer(ids, None, renderer.tokenizer, renderer.renderer.eos_id, max_new_tokens))
        else:
            ids, features = renderer.prompt(example)
            replies.append(model.answer(ids, features, renderer.tokenizer, renderer.renderer.eos_id, max_new_tokens))
    scores: dict[str, list[float]] = {}
    for example, reply in zip(examples, replies):
        scores.setdefault(example.kind or "other", []).append(exact_match(reply, example.expected or example.answer))
    table = {kind: round(sum(v) / len(v), 3) for kind, v in sorted(scores.items())}
    table["all"] = round(sum(sum(v) for v in scores.values()) / max(1, len(examples)), 3)
    return table, replies


__all__ = ["VisualEncoded", "VisualLM", "VisualRenderer", "build_visual_model", "evaluate_visual", "publish_visual",
           "train_visual"]
