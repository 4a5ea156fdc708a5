"""The offline model learns to see: LoRA + a projector over frozen image features, through the engine's loop.

`VisualLM(lm, projector, placeholder)` is the LLaVA-style composite for the offline base:
each image's frozen feature tokens (`mmchat.vision.features`: a 4x4 grid of EfficientNet-Lite0
features, each with its cell's colour, the pooled feature and a colour token) go through the trainable `Projector` and are
spliced (`mmchat.backends.splice`) where the prompt holds that image's placeholders; the
language model (SmolLM2, with LoRA layers) reads them as input embeddings. `VisualRenderer`
renders examples exactly as the text ones (the engine's `Renderer`, chat's template and
system prompt), each photo as `image_text` instead of its label line, and attaches each
example's features to its encoding (`VisualEncoded`), so the engine's collator and answer-only
loss take them unchanged. `train_visual` runs the engine's `run_loop` (seeded, checkpoints,
stop, per-step events, batches balanced over the examples' skills) with the projector's own
learning rate and, for two-stage runs, LoRA held still for the first `projector_first` steps; then `evaluate_visual` asks held-out questions greedily — the adapter through the
composite, the base through today's label pathway — and scores exact match per skill.

Prompt tuning: with `VisualTargets.prompt_tokens` > 0 the composite also holds a `SoftPrompt`
(`mmchat.vision.soft_prompt`, seeded from real token embeddings) whose vectors are spliced at
that many slots opening the system message (`VisualRenderer(prompt_tokens=n)` renders them,
as the offline backend does in chat), trained at `prompt_learning_rate` from the same step as
LoRA (after `projector_first`).

`publish_visual` writes the result as a visual adapter (LoRA files, `projector.safetensors`,
`soft_prompt.safetensors` when there is one, a card naming them), which the offline backend
serves per message. The run around these (load, features, evaluate, publish) is
`mmchat.training.visual_run`; LLaVA presets' targets are the engine's (`llava_targets`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mmchat.backends.splice import (
    PLACEHOLDER,
    SOFT_PROMPT_SLOT,
    image_text,
    placeholder_id,
    soft_prompt_id,
    soft_prompt_text,
    splice,
)
from mmchat.errors import UserFacingError
from mmchat.training.config import TrainingConfig
from mmchat.training.examples import Encoded, Example, Renderer
from mmchat.vision.projector import Projector
from mmchat.vision.soft_prompt import MAX_PROMPT_TOKENS, SoftPrompt


@dataclasses.dataclass(frozen=True)
class VisualTargets:
    """What a visual run trains on the offline composite (the seeds' target table).

    `lora`: LoRA on the language model (the run's `TrainingConfig` gives rank, alpha and target
    modules). `projector`: the projector learns (at `projector_learning_rate`); when False it
    stays as built — a seeded random one, or the one continued from an adapter. `prompt_tokens`:
    that many learned soft-prompt vectors (prompt tuning, at `prompt_learning_rate`), 0 for
    none. `projector_first`: two-stage training as LLaVA does it: for the first that many
    steps only the projector learns, then everything chosen does.
    """

    lora: bool = True
    projector: bool = True
    prompt_tokens: int = 0
    projector_learning_rate: float = 3e-3
    prompt_learning_rate: float = 3e-3
    projector_first: int = 0

    def __post_init__(self) -> None:
        for key in ("lora", "projector"):
            if not isinstance(getattr(self, key), bool):
                raise UserFacingError(f"{key} {getattr(self, key)!r} is not valid; accepted: true or false")
        for key, low, high, accepted in (("prompt_tokens", 0, MAX_PROMPT_TOKENS, f"a whole number 0..{MAX_PROMPT_TOKENS}"),
                                         ("projector_first", 0, 100_000, "a whole number of steps 0..100000")):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserFacingError(f"{key} {value!r} is out of range; accepted: {accepted}")
        for key in ("projector_learning_rate", "prompt_learning_rate"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1e-6 <= value <= 0.1:
                raise UserFacingError(f"{key} {value!r} is out of range; accepted: 1e-6..0.1")
        if not (self.lora or self.projector or self.prompt_tokens):
            raise UserFacingError("a visual run must train something: LoRA, the projector or prompt vectors")
        if self.projector_first and not (self.projector and (self.lora or self.prompt_tokens)):
            raise UserFacingError("projector_first (two-stage) needs the projector and LoRA or prompt vectors to train")

    @property
    def label(self) -> str:
        """'projector + LoRA', 'prompt (16) + LoRA', ... for cards, tables and the tab."""
        parts = (["projector"] if self.projector else []) + ([f"prompt ({self.prompt_tokens})"] if self.prompt_tokens
                                                              else []) + (["LoRA"] if self.lora else [])
        return " + ".join(parts) + (f", projector alone for {self.projector_first} steps" if self.projector_first else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "VisualTargets":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserFacingError(f"unknown visual target settings {unknown}; accepted: "
                                  f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class VisualEncoded(Encoded):
    features: Any = None  # (images, k, feature_dim): this example's images, in prompt order


class VisualLM(nn.Module):
    """A language model reading projected image features where the placeholders stand, and
    (with `soft_prompt`) learned prompt vectors at the soft-prompt slots (token id `slot`)."""

    def __init__(self, lm: nn.Module, projector: Projector, placeholder: int, soft_prompt: SoftPrompt | None = None,
                 slot: int | None = None) -> None:
        super().__init__()
        if soft_prompt is not None and slot is None:
            raise ValueError("a soft prompt needs the slot token's id")
        self.lm, self.projector, self.placeholder = lm, projector, placeholder
        self.soft_prompt, self.slot = soft_prompt, slot

    @property
    def prompt_tokens(self) -> int:
        """How many soft-prompt slots each prompt must open with (0 without a soft prompt)."""
        return self.soft_prompt.tokens if self.soft_prompt is not None else 0

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None,
              with_soft_prompt: bool = True) -> torch.Tensor:
        """Input embeddings with the image vectors (and, unless `with_soft_prompt` is False, the
        soft prompt) spliced in; the base's own prompts hold no soft-prompt slots."""
        embeddings = self.lm.get_input_embeddings()(input_ids)
        if self.soft_prompt is not None and with_soft_prompt:
            embeddings = splice(embeddings, input_ids, self.slot, self.soft_prompt(input_ids.shape[0]),
                                what="soft prompt")
        if image_features is None or image_features.numel() == 0:
            return embeddings
        vectors = self.projector(image_features.to(embeddings.dtype)).reshape(-1, embeddings.shape[-1])
        return splice(embeddings, input_ids, self.placeholder, vectors)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_features: torch.Tensor | None = None,
                logits_to_keep: Any = 0) -> Any:
        return self.lm(inputs_embeds=self.embed(input_ids, image_features), attention_mask=attention_mask,
                       logits_to_keep=logits_to_keep)

    def optimizer_groups(self, learning_rate: float, projector_learning_rate: float,
                         projector_first: int = 0, prompt_learning_rate: float | None = None) -> list[dict[str, Any]]:
        """AdamW parameter groups: the LoRA weights at `learning_rate` and the soft prompt at
        `prompt_learning_rate` (default `learning_rate`), both held for the first
        `projector_first` steps (two-stage), the projector at its own rate from the start."""
        projector = [p for p in self.projector.parameters() if p.requires_grad]
        prompt = [p for p in self.soft_prompt.parameters() if p.requires_grad] if self.soft_prompt is not None else []
        ids = {id(p) for p in projector + prompt}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": learning_rate, "start_step": projector_first}] if rest else []
        if prompt:
            groups.append({"params": prompt, "lr": prompt_learning_rate or learning_rate, "start_step": projector_first})
        return groups + ([{"params": projector, "lr": projector_learning_rate}] if projector else [])

    @torch.no_grad()
    def answer(self, input_ids: list[int], image_features: torch.Tensor | None, tokenizer: Any, eos_id: int,
               max_new_tokens: int = 16, with_soft_prompt: bool = True) -> str:
        ids = torch.tensor([input_ids])
        embeddings = self.embed(ids, image_features, with_soft_prompt)
        out = self.lm.generate(inputs_embeds=embeddings, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                               pad_token_id=tokenizer.pad_token_id or eos_id)
        return tokenizer.decode(out[0], skip_special_tokens=True).strip()


class VisualRenderer:
    """Examples with real photos rendered for the composite: placeholders where each photo
    stands, and `prompt_tokens` soft-prompt slots opening the system prompt (as chat sends them)."""

    def __init__(self, tokenizer: Any, system_prompt: str, features: Any, max_length: int = 256,
                 prompt_tokens: int = 0) -> None:
        self.features = features
        self.system_prompt, self.prompt_tokens = system_prompt, prompt_tokens
        for token in (PLACEHOLDER, SOFT_PROMPT_SLOT):
            if token in system_prompt:
                raise UserFacingError(f"the system prompt holds {token!r}, which stands for learned vectors; "
                                      "accepted: a system prompt without it")
        k = features.tokens_per_image
        # The slots open the system message's text, where the offline backend's prefix_soft_prompt puts them.
        self.renderer = Renderer("offline", tokenizer, soft_prompt_text(prompt_tokens) + system_prompt.strip(),
                                 max_length, describe=lambda paths: [image_text(i + 1, k) for i in range(len(paths))])
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
        for token, what in ((PLACEHOLDER, "image vectors"), (SOFT_PROMPT_SLOT, "soft prompt vectors")):
            if any(token in text for text in texts):
                raise UserFacingError(f"an example's text holds {token!r}, which stands for {what} "
                                      f"(question: {example.question[:60]!r})")

    def encode(self, example: Example) -> VisualEncoded:
        self._check(example)
        encoded = self.renderer.encode(example)
        return VisualEncoded(encoded.input_ids, encoded.labels, self.image_features(list(example.images)))

    def prompt(self, example: Example) -> tuple[list[int], torch.Tensor]:
        self._check(example)
        return self.renderer.prompt_ids(example), self.image_features(list(example.images))


def build_visual_model(lm: nn.Module, tokenizer: Any, features: Any, seed: int,
                       projector: Projector | None = None, *, soft_prompt: SoftPrompt | None = None) -> VisualLM:
    """The composite with `projector` (default: a fresh one, seeded) from the features' width to
    the LM's, and `soft_prompt` when given."""
    hidden = lm.get_input_embeddings().weight.shape[-1]
    if projector is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            projector = Projector(features.feature_dim, hidden)
    if soft_prompt is not None and soft_prompt.hidden_size != hidden:
        raise UserFacingError(f"soft prompts of width {soft_prompt.hidden_size}; this base needs {hidden}")
    slot = soft_prompt_id(tokenizer) if soft_prompt is not None else None
    return VisualLM(lm, projector, placeholder_id(tokenizer), soft_prompt, slot)


def prepare_visual(base: nn.Module, tokenizer: Any, features: Any, config: TrainingConfig, targets: VisualTargets,
                   projector: Projector | None = None) -> VisualLM:
    """The composite on a fresh base copy, set up to train `targets`: LoRA layers (seeded, the
    engine's `prepare_model`), frozen when `targets.lora` is False — peft starts LoRA's B at
    zero, so frozen layers leave the base exactly as it was and every visual run publishes the
    same way — the projector (`projector` to continue one) trainable or frozen, and with
    `targets.prompt_tokens` a trainable soft prompt of that many vectors, drawn from the base's
    token embeddings with `config.seed` (render with `VisualRenderer(prompt_tokens=...)`)."""
    from mmchat.training.engine import prepare_model

    lm = prepare_model(base, "offline", config)
    if not targets.lora:
        for parameter in lm.parameters():
            parameter.requires_grad_(False)
    soft_prompt = None
    if targets.prompt_tokens:
        table = lm.get_input_embeddings().weight.detach()
        soft_prompt = SoftPrompt.from_vocabulary(table, targets.prompt_tokens, config.seed).to(table.device)
    model = build_visual_model(lm, tokenizer, features, config.seed, projector, soft_prompt=soft_prompt)
    model.projector.requires_grad_(targets.projector)
    return model


def _check_prompt_tokens(model: VisualLM, renderer: VisualRenderer) -> None:
    """The renderer must put as many slots in each prompt as the model has soft-prompt vectors."""
    if renderer.prompt_tokens != model.prompt_tokens:
        raise UserFacingError(f"the renderer puts {renderer.prompt_tokens} soft prompt slots in each prompt but the "
                              f"model has {model.prompt_tokens} soft prompt vectors; accepted: "
                              f"VisualRenderer(prompt_tokens={model.prompt_tokens})")


def train_visual(
    model: VisualLM,
    renderer: VisualRenderer,
    examples: Sequence[Example],
    config: TrainingConfig,
    targets: VisualTargets = VisualTargets(),
    *,
    progress: Callable[[int, int, float], None] | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: Path | None = None,
    stop_at: int = 0,
) -> list[float]:
    """Train the composite in place through the engine's loop; the loss of every step.

    Batches are balanced over the examples' kinds (each skill in equal shares per batch)."""
    from mmchat.training.engine import run_loop

    _check_prompt_tokens(model, renderer)
    encoded = [renderer.encode(example) for example in examples]
    pad = renderer.tokenizer.pad_token_id if renderer.tokenizer.pad_token_id is not None else renderer.renderer.eos_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return run_loop(model, encoded, config, pad, progress, stop, checkpoints=checkpoints, on_event=on_event,
                        groups=model.optimizer_groups(config.learning_rate, targets.projector_learning_rate,
                                                      targets.projector_first, targets.prompt_learning_rate),
                        strata=[example.kind or "other" for example in examples], stop_at=stop_at)


def publish_visual(
    model: VisualLM, store: Any, config: TrainingConfig, *, base_model: str, tokenizer: Any, features: Any,
    metrics: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None,
    examples: list[dict[str, str]] | None = None,
) -> Any:
    """Publish the trained composite as a visual adapter: peft's LoRA files, `projector.safetensors`
    (and `soft_prompt.safetensors` when the composite has a soft prompt) and a card whose
    `projector` (and `soft_prompt`) entry names them (what `AdapterHost` and the offline backend
    load). `base_model`: the base's source for the card. Returns the `StoredAdapter`."""
    import tempfile

    from mmchat.adapters.card import AdapterCard, base_fingerprint
    from mmchat.training.engine import copy_peft_files, lora_targets
    from mmchat.vision.projector import PROJECTOR_FILE, save_projector
    from mmchat.vision.soft_prompt import SOFT_PROMPT_FILE, save_soft_prompt

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
        soft_prompt=({"file": SOFT_PROMPT_FILE, "tokens": model.soft_prompt.tokens,
                      "hidden_size": model.soft_prompt.hidden_size} if model.soft_prompt is not None else {}),
    )
    with tempfile.TemporaryDirectory(prefix=".mmchat-visual-") as tmp:
        folder = Path(tmp) / config.name
        lm.save_pretrained(str(folder), safe_serialization=True)

        def write_weights(staging: Path) -> None:
            copy_peft_files(folder, staging)
            save_projector(model.projector, staging / PROJECTOR_FILE)
            if model.soft_prompt is not None:
                save_soft_prompt(model.soft_prompt, staging / SOFT_PROMPT_FILE)

        return store.publish(card, write_weights)


def evaluate_visual(
    model: VisualLM, renderer: VisualRenderer, examples: Sequence[Example], *, base: bool = False,
    describe: Callable[[list[str]], list[str]] | None = None, max_new_tokens: int = 12,
) -> tuple[dict[str, float], list[str]]:
    """Held-out exact match per skill (`example.kind`) and the replies, greedy.

    `base=True` asks the base as chat does today: LoRA off, each photo as the label line
    `describe(paths)` writes (the offline pathway), no projector, no soft prompt.
    """
    from mmchat.training.metrics import exact_match

    if not base:
        _check_prompt_tokens(model, renderer)

    replies = []
    model.eval()
    lm = model.lm
    disable = getattr(lm, "disable_adapter", None)
    for example in examples:
        if base:
            text_renderer = Renderer("offline", renderer.tokenizer, renderer.system_prompt,
                                     renderer.renderer.max_length, describe=describe)
            ids = text_renderer.prompt_ids(example)
            with (disable() if disable is not None else contextlib.nullcontext()):
                replies.append(model.answer(ids, None, renderer.tokenizer, renderer.renderer.eos_id, max_new_tokens,
                                            with_soft_prompt=False))
        else:
            ids, features = renderer.prompt(example)
            replies.append(model.answer(ids, features, renderer.tokenizer, renderer.renderer.eos_id, max_new_tokens))
    scores: dict[str, list[float]] = {}
    for example, reply in zip(examples, replies):
        scores.setdefault(example.kind or "other", []).append(exact_match(reply, example.expected or example.answer))
    table = {kind: round(sum(v) / len(v), 3) for kind, v in sorted(scores.items())}
    table["all"] = round(sum(sum(v) for v in scores.values()) / max(1, len(examples)), 3)
    return table, replies


__all__ = ["MAX_PROMPT_TOKENS", "VisualEncoded", "VisualLM", "VisualRenderer", "VisualTargets", "build_visual_model",
           "evaluate_visual", "prepare_visual", "publish_visual", "train_visual"]
