"""AdapterHost: the LoRA adapters loaded on one model, and one generation at a time on it.

One host per loaded model. Adapters are loaded once by name (`PeftModel.from_pretrained` for
the first, `load_adapter` after that: the base is never reloaded) and chosen per generation:
`activate(name)` holds the model's lock for the whole generation, switches on the adapter
layers and `set_adapter`s for the generation, and switches them off again after it: between
generations (and for `None`/"base") the model is the bare base, also for code that calls
`backend.model` directly (LoRA layers are injected into the base's own modules). Holding
the lock matters: peft's adapter switch (and its per-row `adapter_names`) works through state
on shared modules, so two generations running at once on one model would mix adapters; with
the lock, an answer in flight keeps its adapter and a second user waits for it.

A visual adapter's folder also holds a projector (`mmchat.vision.projector`) beside peft's
files, and one trained with prompt tuning a soft prompt (`mmchat.vision.soft_prompt`, only
beside a projector): `read_visual_parts` reads them — the files and the image features the
projector expects from the card's `projector` and `soft_prompt` entries, or
`projector.safetensors` with the default `FeatureSpec` for a folder without a card — checked
against the base's hidden size and the features' width. `load` calls it before peft touches
the model, so parts that do not fit fail the load and leave the host as it was; the upload
check (`mmchat.adapters.bundle`) calls the same function. `projector(name)`,
`feature_spec(name)` and `soft_prompt(name)` give them to the backend, which splices the
projected image vectors and the prompt vectors into the prompt's embeddings; they are plain
torch, outside the model, so they switch with the adapter at no cost and need no lock.

It reads adapter folders in standard peft format (safetensors only); it does not validate
cards beyond the projector entry, scan a store or train (those belong to the registry and the
training engine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmchat.errors import UserFacingError

BASE = "base"  # the name the UI and the API use for "no adapter"


def adapter_name(name: str | None) -> str | None:
    """`None` for the bare base ("", None or "base"), else the adapter's name."""
    return None if name in (None, "", BASE) else str(name)


@dataclasses.dataclass(frozen=True)
class VisualParts:
    """What a visual adapter adds to its LoRA files: the projector, the image features it reads,
    and the learned prompt vectors (None without prompt tuning)."""

    projector: Any  # mmchat.vision.projector.Projector
    spec: Any  # mmchat.vision.features.FeatureSpec
    soft_prompt: Any = None  # mmchat.vision.soft_prompt.SoftPrompt


def read_visual_parts(folder: Path, hidden_size: int, name: str, card: Any = None) -> VisualParts | None:
    """The visual parts of adapter `name`'s `folder`, checked against a base of `hidden_size`
    (on the CPU, fp32); None when it holds no projector. The files and features come from
    `card` (an `AdapterCard`, for a folder whose card is not written yet) or else the folder's
    card. Raises `UserFacingError` naming the adapter, the file and what is accepted."""
    import json

    from mmchat.adapters.card import CARD_FILE, CardError, check_projector, check_soft_prompt
    from mmchat.vision.projector import PROJECTOR_FILE

    entry: dict[str, Any] = dict(card.projector) if card is not None else {}
    prompt_entry: dict[str, Any] = dict(card.soft_prompt) if card is not None else {}
    if card is None and (folder / CARD_FILE).is_file():
        try:
            card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
            raw, raw_prompt = card.get("projector"), card.get("soft_prompt")
            entry = check_projector(raw) if raw not in (None, {}) else {}
            prompt_entry = check_soft_prompt(raw_prompt) if raw_prompt not in (None, {}) else {}
        except (CardError, ValueError, AttributeError, UnicodeDecodeError) as err:
            raise UserFacingError(f"adapter {name!r}: {CARD_FILE}: {err}") from None
        if prompt_entry and not entry:
            raise UserFacingError(f"adapter {name!r}: {CARD_FILE}: soft_prompt is given without a projector; "
                                  "accepted: a soft prompt only beside a projector")
    path = folder / entry.get("file", PROJECTOR_FILE)
    if not entry and not path.is_file():
        return None
    named = [("a projector", path)] + ([("a soft prompt", folder / prompt_entry["file"])] if prompt_entry else [])
    for part, file in named:
        if not file.is_file():
            raise UserFacingError(f"adapter {name!r}: its card names {part}, {file.name}, which {folder.name} "
                                  "does not hold")
    from mmchat.errors import ConfigError
    from mmchat.vision.features import FeatureSpec
    from mmchat.vision.projector import load_projector
    from mmchat.vision.soft_prompt import load_soft_prompt

    try:
        spec = FeatureSpec.from_card(entry.get("feature_spec", {}))
    except (TypeError, ConfigError) as err:
        raise UserFacingError(f"adapter {name!r}: {CARD_FILE}: projector.feature_spec: {err}") from None
    for key, needed, why in (("tokens_per_image", spec.tokens_per_image, "its feature_spec gives"),
                             ("feature_dim", spec.token_dim, "the offline image features of that spec have")):
        if entry.get(key, needed) != needed:
            raise UserFacingError(f"adapter {name!r}: {CARD_FILE}: projector.{key} is {entry[key]}; {why} {needed}")
    try:
        projector = load_projector(path, spec.token_dim, hidden_size)
        soft_prompt = load_soft_prompt(folder / prompt_entry["file"], hidden_size) if prompt_entry else None
    except UserFacingError as err:
        raise UserFacingError(f"adapter {name!r}: {err}") from None
    if soft_prompt is not None and soft_prompt.tokens != prompt_entry["tokens"]:
        raise UserFacingError(f"adapter {name!r}: {prompt_entry['file']} holds {soft_prompt.tokens} soft prompt "
                              f"vectors; its card says soft_prompt.tokens {prompt_entry['tokens']}")
    return VisualParts(projector, spec, soft_prompt)


class AdapterHost:
    def __init__(self, model: Any) -> None:
        self.base_model = model
        self.model = model  # the PeftModel once an adapter is loaded
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._layers: list[Any] | None = None  # the LoRA layers, for fast switching (see _switch)
        self._visual: dict[str, VisualParts] = {}  # visual adapters only

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def load(self, name: str, folder: str | Path) -> None:
        """Load a peft adapter folder under `name` (once; the base stays as it is)."""
        folder = Path(folder)
        if adapter_name(name) is None:
            raise UserFacingError(f"{name!r} is reserved for the bare base model; name the adapter otherwise")
        if name in self._names:
            raise UserFacingError(f"an adapter named {name!r} is already loaded")
        if any(folder.glob("*.bin")) or not (folder / "adapter_model.safetensors").is_file():
            raise UserFacingError(
                f"adapter {name!r}: {folder.name} must hold adapter_model.safetensors (pickled .bin weights are refused)"
            )
        _check_safetensors(folder / "adapter_model.safetensors", name)
        visual = self._read_visual(name, folder)  # before peft: a misfit leaves the host as it was
        with self._lock:  # never while a generation runs on the model
            if self.model is self.base_model:
                from peft import PeftModel

                try:
                    self.model = PeftModel.from_pretrained(self.base_model, str(folder), adapter_name=name)
                except Exception:
                    _remove_adapter_layers(self.base_model)  # injected before the weights failed to fit
                    raise
            else:
                try:
                    self.model.load_adapter(str(folder), adapter_name=name)
                except Exception:
                    if name in self.model.peft_config:
                        self.model.delete_adapter(name)
                    raise
            self.model.eval()
            self.model.base_model.disable_adapter_layers()  # the bare base between generations
            self._names.append(name)
            if visual is not None:
                self._visual[name] = visual
            self._layers = None

    def _read_visual(self, name: str, folder: Path) -> VisualParts | None:
        """The folder's visual parts (see `read_visual_parts`) on the base's device and dtype, frozen."""
        embeddings = self.base_model.get_input_embeddings().weight
        parts = read_visual_parts(folder, int(embeddings.shape[-1]), name)
        if parts is None:
            return None

        def place(module: Any) -> Any:
            return module.to(device=embeddings.device, dtype=embeddings.dtype).requires_grad_(False)

        return dataclasses.replace(parts, projector=place(parts.projector),
                                   soft_prompt=place(parts.soft_prompt) if parts.soft_prompt is not None else None)

    def projector(self, name: str | None) -> Any:
        """The loaded adapter's `Projector` (None for the base and for adapters without one)."""
        visual = self._visual.get(adapter_name(name) or "")
        return visual.projector if visual is not None else None

    def feature_spec(self, name: str | None) -> Any:
        """The `FeatureSpec` the adapter's projector reads (None without a projector)."""
        visual = self._visual.get(adapter_name(name) or "")
        return visual.spec if visual is not None else None

    def soft_prompt(self, name: str | None) -> Any:
        """The loaded adapter's `SoftPrompt` (None for the base and for adapters without one)."""
        visual = self._visual.get(adapter_name(name) or "")
        return visual.soft_prompt if visual is not None else None

    def unload(self, name: str) -> None:
        """Remove a loaded adapter (waits for a generation using the model to end)."""
        if name not in self._names:
            raise UserFacingError(f"no adapter named {name!r} is loaded")
        with self._lock:
            if self._names == [name]:  # the last one: back to the plain base model
                self.model.unload()
                self.model = self.base_model
            else:
                self.model.delete_adapter(name)
            self._names.remove(name)
            self._visual.pop(name, None)
            self._layers = None

    def fingerprint(self, vocabulary: dict[str, int]) -> str:
        """The base's fingerprint (`card.base_fingerprint`): its config and `vocabulary`."""
        from mmchat.adapters.card import base_fingerprint

        return base_fingerprint(self.base_model.config.to_dict(), vocabulary)

    def _switch(self, name: str | None, enabled: bool) -> None:
        """Point the LoRA layers at `name` (None: leave it) and switch them on or off.

        peft's `set_adapter` / `enable_adapter_layers` walk every module of the model and reset
        `requires_grad` on every adapter's weights: 2 ms with two adapters loaded, 39 ms with
        twenty on the offline model (`python -m bench adapters`). For plain LoRA adapters (no
        `modules_to_save`, no trainable tokens) the same state lives in two attributes of each
        LoRA layer, set here on a list of the layers kept since the last load (0.2 ms). Other
        adapters, or a peft without those attributes, go through peft's own calls.
        """
        if self._layers is None:
            self._layers = _plain_lora_layers(self.model)
        if self._layers:
            for layer in self._layers:
                if name is not None:
                    layer._active_adapter = name
                layer._disable_adapters = not enabled
            if name is not None:
                self.model.base_model.active_adapter = name
            return
        if name is not None:
            self.model.set_adapter(name)
        if enabled:
            self.model.base_model.enable_adapter_layers()
        else:
            self.model.base_model.disable_adapter_layers()

    def check(self, name: str | None) -> str | None:
        """The adapter's name if it is loaded (None for the base); else a message naming the loaded ones."""
        wanted = adapter_name(name)
        if wanted is not None and wanted not in self._names:
            available = ", ".join([BASE, *self._names])
            raise UserFacingError(f"no adapter named {wanted!r} is loaded; choose one of: {available}")
        return wanted

    @contextlib.contextmanager
    def activate(self, name: str | None) -> Iterator[Any]:
        """Hold the model for one generation with adapter `name` active; yields the model to call."""
        wanted = self.check(name)
        with self._lock:
            if wanted is None:  # adapter layers are off between generations: this is the bare base
                yield self.model
                return
            self._switch(wanted, enabled=True)
            try:
                yield self.model
            finally:
                self._switch(None, enabled=False)

    @contextlib.contextmanager
    def activate_batch(self, names: Sequence[str | None]) -> Iterator[tuple[Any, list[str] | None]]:
        """Hold the model for one batched generation whose row i answers with `names[i]`.

        Yields `(model, adapter_names)`: pass `adapter_names` to `model.generate` (peft's
        mixed-adapter batch, "__base__" for the bare base); it is None when no adapter is asked
        for. The lock is held for the whole generation, like `activate`.
        """
        wanted = [self.check(name) for name in names]
        with self._lock:
            if all(name is None for name in wanted):
                yield self.model, None
                return
            self._switch(None, enabled=True)
            try:
                yield self.model, ["__base__" if name is None else name for name in wanted]
            finally:
                self._switch(None, enabled=False)


def _check_safetensors(path: Path, name: str) -> None:
    """Refuse a weights file that is not readable safetensors before peft touches the model."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            if not list(weights.keys()):
                raise ValueError("it holds no tensors")
    except Exception as err:
        raise UserFacingError(
            f"adapter {name!r}: {path.name} is not a readable safetensors file ({err}); "
            "accepted: the adapter_model.safetensors peft writes"
        ) from None


def _remove_adapter_layers(model: Any) -> None:
    """Put the base layers back where a failed first load injected LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, child_name, child.get_base_layer())


def _plain_lora_layers(model: Any) -> list[Any]:
    """The model's LoRA layers when switching them is two attributes each, else [] (see `_switch`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    configs = getattr(model, "peft_config", {}).values()
    if any(c.peft_type != "LORA" or getattr(c, "modules_to_save", None) or getattr(c, "trainable_token_indices", None)
           for c in configs):
        return []
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not all(hasattr(layer, "_active_adapter") and hasattr(layer, "_disable_adapters") for layer in layers):
        return []
    return layers
