"""The training configuration: one frozen dataclass, checked when it is made.

`TrainingConfig` holds what a LoRA training run needs (the adapter's name, one-line
description and task; rank, alpha, dropout, target modules; for LLaVA presets which parts are
trained (`llava_targets`: "language", "projector", "vision", see `mmchat.training.engine`) and
the first vision-tower layer adapted; learning rate, epochs or steps,
batch size and gradient accumulation, warm-up, seed, longest example; how often to compute
the held-out loss, write sample answers and checkpoint). Every bad value raises `UserFacingError` naming the
value and the accepted range. `TrainingConfig.from_mapping` builds one from a TOML table and
names unknown keys. It does not read files, load models or train (see `mmchat.train` and
`mmchat.training.engine`); it imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from mmchat.adapters.card import NAME, name_problem
from mmchat.errors import UserFacingError

MAX_RANK = 64  # LoRA rank accepted here (r 4-16 is the usual range; 64 keeps a SmolLM2 adapter under 30 MB)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# What a LLaVA-preset run trains (seed guidance, in this order of priority: the language model's
# attention first, the projector next, the vision tower last).
LLAVA_TARGETS = ("language", "projector", "vision")


@dataclass(frozen=True)
class TrainingConfig:
    name: str
    description: str
    task: str = "custom"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    learning_rate: float = 1e-3
    epochs: int = 1
    max_steps: int = 0  # 0: as many as `epochs` take
    batch_size: int = 8
    warmup_steps: int = 0
    seed: int = 0
    max_length: int = 256  # tokens per example (prompt + answer); longer ones are refused
    layers_from: int = 0  # LoRA on decoder layers from this index up (0: all): less to backpropagate
    grad_accum: int = 1  # batches per optimizer step
    eval_every: int = 0  # steps between held-out losses (0: only at the end, when there are held-out rows)
    sample_every: int = 0  # steps between sample answers to fixed held-out prompts (0: never)
    checkpoint_every: int = 0  # steps between checkpoints (0: none, except when stopped)
    llava_targets: tuple[str, ...] = ("language",)  # LLaVA presets only: a subset of LLAVA_TARGETS
    vision_layers_from: int = 0  # "vision": LoRA on vision-tower layers from this index up (0: all)

    def __post_init__(self) -> None:
        def number(key: str, kinds: tuple[type, ...], low: float, high: float, accepted: str) -> None:
            value = getattr(self, key)
            if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
                raise UserFacingError(f"{key} {value!r} is out of range; accepted: {accepted}")

        if not isinstance(self.name, str) or not NAME.fullmatch(self.name) or self.name == "base":
            raise UserFacingError(
                f"adapter name {self.name!r} is not valid; accepted: a-z, 0-9, '-', '_' (at most 48, not 'base')"
            )
        if name_problem(self.name):
            raise UserFacingError(name_problem(self.name))
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise UserFacingError(f"description {self.description!r} is not valid; accepted: one non-empty line")
        if not isinstance(self.task, str) or not NAME.fullmatch(self.task):
            raise UserFacingError(f"task {self.task!r} is not valid; accepted: a-z, 0-9, '-', '_' (e.g. 'caption')")
        number("rank", (int,), 1, MAX_RANK, f"an integer 1..{MAX_RANK}")
        number("alpha", (int, float), 0.01, 1024, "a number above 0, at most 1024 (often 2 x rank)")
        number("dropout", (int, float), 0.0, 0.5, "0..0.5")
        number("learning_rate", (int, float), 1e-6, 0.1, "1e-6..0.1")
        number("epochs", (int,), 1, 100, "an integer 1..100")
        number("max_steps", (int,), 0, 100_000, "0 (epochs decide) or an integer up to 100000")
        number("batch_size", (int,), 1, 64, "an integer 1..64")
        number("warmup_steps", (int,), 0, 10_000, "an integer 0..10000")
        number("seed", (int,), 0, 2**32 - 1, "an integer 0..4294967295")
        number("max_length", (int,), 32, 8192, "an integer 32..8192")
        number("layers_from", (int,), 0, 1000, "0 (all layers) or the index of the first decoder layer to adapt")
        number("grad_accum", (int,), 1, 64, "an integer 1..64")
        number("eval_every", (int,), 0, 100_000, "0 (at the end only) or an integer up to 100000")
        number("sample_every", (int,), 0, 100_000, "0 (never) or an integer up to 100000")
        number("checkpoint_every", (int,), 0, 100_000, "0 (only when stopped) or an integer up to 100000")
        number("vision_layers_from", (int,), 0, 1000, "0 (all layers) or the index of the first vision-tower layer "
                                                     "to adapt")
        parts = self.llava_targets
        if (not isinstance(parts, tuple) or not parts or not all(isinstance(p, str) for p in parts)
                or not set(parts) <= set(LLAVA_TARGETS) or len(set(parts)) != len(parts)):
            raise UserFacingError(
                f"llava_targets {parts!r} is not valid; accepted: a non-empty list of distinct names among "
                f"{list(LLAVA_TARGETS)} (e.g. ['language', 'projector'])"
            )
        targets = self.target_modules
        if not isinstance(targets, tuple) or not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise UserFacingError(
                f"target_modules {targets!r} is not valid; accepted: a non-empty list of module names "
                f"(e.g. {list(DEFAULT_TARGETS)})"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainingConfig":
        """From a TOML table; lists become tuples, unknown keys are named."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserFacingError(f"unknown training key(s) {unknown}; accepted: {', '.join(sorted(known))}")
        missing = [k for k in ("name", "description") if k not in values]
        if missing:
            raise UserFacingError(f"the training config needs {', '.join(missing)}")
        data = dict(values)
        for key in ("target_modules", "llava_targets"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
            elif isinstance(data.get(key), str):
                data[key] = (data[key],)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["llava_targets"] = list(self.llava_targets)
        return data


__all__ = ["DEFAULT_TARGETS", "LLAVA_TARGETS", "MAX_RANK", "TrainingConfig"]
