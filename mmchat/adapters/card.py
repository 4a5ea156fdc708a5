"""The adapter card: what an adapter is, which base it was trained on, and how it scored.

`adapter_card.json` sits beside peft's own files in each adapter folder and is written last:
a folder without a valid card is incomplete. `AdapterCard.from_json` checks every field and
names the bad one with what is accepted; `base_fingerprint` identifies a base model by its
architecture config and vocabulary, so an adapter is never applied to a base it was not
trained on (two checkpoints with the same shapes and vocabulary share a fingerprint: shapes
are what LoRA weights depend on). A visual adapter's card also names its projector
(`projector`: the safetensors file beside peft's, the image features it reads and how many
vectors an image becomes), and one trained with prompt tuning its soft prompt too
(`soft_prompt`: the file, how many vectors and their width; only beside a projector); cards
without them say nothing about them, in the dataclass or the JSON. Whether the files fit the
loaded base is the host's check (`mmchat.adapters.host.read_visual_parts`). Pure data: no
torch, no files.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

CARD_FILE = "adapter_card.json"
CARD_FORMAT = "mmchat.adapter_card/1"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
# peft keeps each adapter's layers in torch ModuleDicts keyed by the adapter's name, so a name
# that is already an attribute there fails to load ("attribute 'items' already exists"). The
# names of torch.nn.ModuleDict / ParameterDict attributes that NAME admits, with transformers
# loaded (a test keeps the list equal to them); no torch import here.
TORCH_ATTRIBUTES = frozenset({
    "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "clear", "compile", "copy", "cpu",
    "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "fromkeys", "get", "get_buffer",
    "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "items", "keys", "load_state_dict",
    "modules", "mtia", "named_buffers", "named_children", "named_modules", "named_parameters", "parameters", "pop",
    "popitem", "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter", "register_state_dict_post_hook",
    "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule", "setdefault",
    "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "update", "values", "xpu",
    "zero_grad",
    "smart_apply",  # added to torch.nn.Module by transformers when it loads
})


def name_problem(name: object) -> str | None:
    """Why `name` cannot name an adapter (None when it can)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return f"adapter name {name!r} is not valid; accepted: a-z, 0-9, '-', '_' (at most 48)"
    if name == "base" or name in TORCH_ATTRIBUTES:
        why = "the bare base" if name == "base" else "peft keys adapters by name in torch modules, which have one"
        return f"adapter name {name!r} is reserved ({why}); choose another, e.g. 'my-{name}'"
    return None


# Config keys that say nothing about the weights' shapes or meaning.
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                                   "architectures", "_attn_implementation_autoset"})


def base_fingerprint(config: Mapping[str, Any], vocabulary: Mapping[str, int]) -> str:
    """sha256 of the base's config (without volatile keys) and its token -> id vocabulary."""
    def stable(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: stable(v) for k, v in sorted(value.items()) if k not in _VOLATILE_CONFIG_KEYS}
        if isinstance(value, (list, tuple)):
            return [stable(v) for v in value]
        return value

    digest = hashlib.sha256()
    digest.update(json.dumps(stable(dict(config)), sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(vocabulary.items()), ensure_ascii=False).encode())
    return digest.hexdigest()


class CardError(ValueError):
    """A card field is missing or wrong; the message names it and what is accepted."""


def _check_file(entry: str, value: dict[str, Any], example: str) -> None:
    file = value.get("file")
    if (not isinstance(file, str) or not file.endswith(".safetensors") or "/" in file or "\\" in file
            or file.startswith(".")):
        raise CardError(f"{entry}.file is {file!r}; expected a file name ending in .safetensors in the "
                        f"adapter's folder (e.g. {example!r})")


def _check_whole(entry: str, value: dict[str, Any], keys: tuple[str, ...], high: int) -> None:
    for key in keys:
        number = value.get(key)
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= high:
            raise CardError(f"{entry}.{key} is {number!r}; expected a whole number 1..{high}")


def check_projector(value: Any) -> dict[str, Any]:
    """The card's `projector` entry, checked: {"file": "<name>.safetensors", "feature_spec": {...},
    "tokens_per_image": k, "feature_dim": d} (whether the spec gives k is the host's check)."""
    if not isinstance(value, dict):
        raise CardError(f"projector is {value!r}; expected an object naming file, feature_spec, tokens_per_image "
                        "and feature_dim")
    _check_file("projector", value, "projector.safetensors")
    spec = value.get("feature_spec", {})
    if not isinstance(spec, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                             for k, v in spec.items()):
        raise CardError(f"projector.feature_spec is {spec!r}; expected an object of whole numbers, e.g. {{\"grid\": 4}}")
    _check_whole("projector", value, ("tokens_per_image", "feature_dim"), 65536)
    return {**value, "feature_spec": dict(spec)}


MAX_SOFT_PROMPT_TOKENS = 64  # mmchat.vision.soft_prompt.MAX_PROMPT_TOKENS (no torch here; a test keeps them equal)


def check_soft_prompt(value: Any) -> dict[str, Any]:
    """The card's `soft_prompt` entry, checked: {"file": "<name>.safetensors", "tokens": n,
    "hidden_size": h} (whether the file holds n vectors of the base's width is the host's check)."""
    if not isinstance(value, dict):
        raise CardError(f"soft_prompt is {value!r}; expected an object naming file, tokens and hidden_size")
    _check_file("soft_prompt", value, "soft_prompt.safetensors")
    _check_whole("soft_prompt", value, ("tokens",), MAX_SOFT_PROMPT_TOKENS)
    _check_whole("soft_prompt", value, ("hidden_size",), 65536)
    return dict(value)


@dataclass(frozen=True)
class AdapterCard:
    name: str
    description: str  # one line shown in the UI
    task: str  # e.g. "vqa-short", "caption", "json"
    base_model: str  # the base's source, e.g. "builtin:smollm2-135m-instruct"
    base_fingerprint: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    chat_template: str = ""  # the template the training examples were rendered with
    dataset: dict[str, Any] = field(default_factory=dict)  # summary, sha256, examples
    metrics: dict[str, Any] = field(default_factory=dict)  # {"base": {...}, "adapter": {...}}
    examples: list[dict[str, str]] = field(default_factory=list)  # held-out prompt/base/adapter
    created: float = field(default_factory=time.time)
    format: str = CARD_FORMAT
    projector: dict[str, Any] = field(default_factory=dict)  # a visual adapter's (see check_projector); {}: none
    soft_prompt: dict[str, Any] = field(default_factory=dict)  # its learned prompt (check_soft_prompt); {}: none

    def to_json(self) -> str:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        for key in ("projector", "soft_prompt"):  # a card without them reads as it did before there were any
            if not data[key]:
                del data[key]
        return json.dumps(data, ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "AdapterCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CardError(f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise CardError("must be a JSON object")
        if data.get("format") != CARD_FORMAT:
            raise CardError(f"format is {data.get('format')!r}; expected {CARD_FORMAT!r}")

        def need(key: str, types: tuple[type, ...], what: str) -> Any:
            value = data.get(key)
            if not isinstance(value, types) or isinstance(value, bool):
                raise CardError(f"{key} is {value!r}; expected {what}")
            return value

        name = need("name", (str,), "a name of a-z, 0-9, '-', '_' (at most 48)")
        if name_problem(name):
            raise CardError(f"name is {name!r}; expected a name of a-z, 0-9, '-', '_' (at most 48, not a reserved "
                            "name such as 'base' or 'items')")
        fingerprint = need("base_fingerprint", (str,), "a sha256 (64 hex digits)")
        if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
            raise CardError(f"base_fingerprint is {fingerprint[:80]!r}; expected a sha256 (64 hex digits)")
        rank = need("rank", (int,), "an integer 1..256")
        if not 1 <= rank <= 256:
            raise CardError(f"rank is {rank}; expected an integer 1..256")
        targets = data.get("target_modules")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise CardError(f"target_modules is {targets!r}; expected a list of module names or one regex")
        for key in ("dataset", "metrics"):
            if not isinstance(data.get(key, {}), dict):
                raise CardError(f"{key} must be an object")
        examples = data.get("examples", [])
        if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
            raise CardError("examples must be a list of objects")
        projector = check_projector(data["projector"]) if data.get("projector") not in (None, {}) else {}
        soft_prompt = check_soft_prompt(data["soft_prompt"]) if data.get("soft_prompt") not in (None, {}) else {}
        if soft_prompt and not projector:
            raise CardError("soft_prompt is given without a projector; expected a soft prompt only in a visual "
                            "adapter's card, beside its projector entry")
        return cls(
            name=name,
            description=need("description", (str,), "one line of text"),
            task=need("task", (str,), "a task name"),
            base_model=need("base_model", (str,), "the base model's source"),
            base_fingerprint=fingerprint,
            rank=rank,
            alpha=float(need("alpha", (int, float), "a number")),
            target_modules=tuple(targets),
            chat_template=str(data.get("chat_template") or ""),
            dataset=dict(data.get("dataset", {})),
            metrics=dict(data.get("metrics", {})),
            examples=list(examples),
            created=float(need("created", (int, float), "a unix time")),
            projector=projector,
            soft_prompt=soft_prompt,
        )
