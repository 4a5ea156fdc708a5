"""Merge a stored LoRA adapter into a copy of its base and write a standalone model folder.

`merge_adapter(base_model, processing, stored, out_dir)` takes a fresh copy of the base
(`mmchat.backends.registry.load_base_copy`; never the serving model: the merge changes the
copy's weights, and a model that already carries LoRA layers is refused), checks that the
adapter was trained on this base (the card's fingerprint; the message names both bases),
applies it with `PeftModel.from_pretrained`, folds it in with `merge_and_unload()`, and
writes, through a staged folder renamed into place only when complete (a failure leaves
nothing):

* the merged model with `save_pretrained` (safetensors only: transformers 5 writes nothing
  else, and any pickle-format file found is an error), loadable with plain transformers
  `AutoModelForCausalLM` / `AutoModelForImageTextToText`, no peft;
* the tokenizer or processor (`save_pretrained`);
* a visual adapter's own files (its card's `projector`, and `soft_prompt` when it has one),
  copied unchanged beside the merged weights, not merged: a projector maps mmchat's offline
  image features (`mmchat.vision.features`) into the model's embeddings, outside the model's
  layers, and soft prompt vectors are spliced into the prompt, so neither is a weight of the
  model. Plain transformers loads the merged model without them (text only, and the label
  pathway for images in mmchat); mmchat's image pathway reads them from the entries recorded
  in the merged card's `visual` (file, feature spec, what each is for);
* `merged_card.json`, last: the adapter's card, the base it was merged into, the dtype, how to
  load it, what happened to a visual adapter's files, and each file's size.

A quantized base (bitsandbytes 4-bit or 8-bit, the GPU preset's NF4) is not merged in 4-bit
(re-quantizing the merged weights would add a second rounding error and the folder would
need bitsandbytes): it is dequantized (`model.dequantize()`) and cast to bfloat16 first, and
the result says so (`MergedModel.dequantized_from`, `MergedModel.summary`). The merged
model therefore equals the dequantized base plus the adapter, not the 4-bit serving model
plus the adapter bit for bit. A quantization transformers cannot dequantize is refused with
a message.

`export_adapter_zip` (an adapter as a zip) lives in `mmchat.adapters.bundle`. This module
does not load bases (the caller does, off the serving model) and does not register the
merged model anywhere. torch and peft are imported inside the functions.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmchat.adapters.card import base_fingerprint
from mmchat.adapters.store import WEIGHTS_FILE, StoredAdapter
from mmchat.errors import UserFacingError
from mmchat.files import human_bytes, staged_folder

__all__ = ["MERGED_CARD_FILE", "MergedModel", "merge_adapter"]

MERGED_CARD_FILE = "merged_card.json"
MERGED_CARD_FORMAT = "mmchat.merged_model/1"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DEQUANTIZED_DTYPE = "bfloat16"
VISUAL_PARTS = ("projector", "soft_prompt")  # card entries naming a visual adapter's own files
VISUAL_NOTE = ("copied unchanged, not merged: the projector maps mmchat's offline image features into this "
               "model's embeddings and soft prompt vectors are spliced into the prompt, outside the model's "
               "layers; plain transformers loads the model without them, mmchat's image pathway reads them")


@dataclass(frozen=True)
class MergedModel:
    folder: Path
    adapter: str
    dtype: str  # of the saved weights, e.g. "float32", "bfloat16"
    dequantized_from: str | None  # e.g. "bitsandbytes 4-bit (nf4)": merged into a dequantized bf16 copy
    model_class: str  # the transformers Auto class that loads it, e.g. "AutoModelForCausalLM"
    processing_class: str  # "AutoTokenizer" or "AutoProcessor"
    size_bytes: int
    visual_files: tuple[str, ...] = ()  # a visual adapter's projector / soft prompt, copied beside the weights

    @property
    def summary(self) -> str:
        """One line for the UI."""
        text = (f"merged {self.adapter!r} into {self.folder} ({human_bytes(self.size_bytes)}, {self.dtype}); "
                f"load it with transformers {self.model_class}.from_pretrained and {self.processing_class}")
        if self.visual_files:
            text += (f". Its {' and '.join(self.visual_files)} {'is' if len(self.visual_files) == 1 else 'are'} "
                     f"copied beside the weights, not merged: mmchat's image pathway reads them (see "
                     f"{MERGED_CARD_FILE}); plain transformers does not")
        if self.dequantized_from:
            text += (f". The base was {self.dequantized_from}: the adapter was merged into a dequantized "
                     f"{self.dtype} copy, so the folder is {self.dtype}, not 4-bit")
        return text


def merge_adapter(base_model: Any, processing: Any, stored: StoredAdapter, out_dir: str | Path) -> MergedModel:
    """Merge `stored` into `base_model` (a fresh copy, changed in place) and write `out_dir`.

    `processing`: the base's tokenizer or processor (saved beside the model). `out_dir` must
    not exist. Raises `UserFacingError` for a wrong base, an existing folder, a base that
    already carries adapters or a quantization that cannot be undone.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserFacingError(f"{out_dir} already exists; choose a new folder for the merged model or delete it")
    _refuse_adapted(base_model)
    tokenizer = getattr(processing, "tokenizer", processing)
    fingerprint = base_fingerprint(base_model.config.to_dict(), tokenizer.get_vocab())
    card = stored.card
    if card.base_fingerprint != fingerprint:
        raise UserFacingError(
            f"adapter {stored.name!r} was trained on {card.base_model} (fingerprint {card.base_fingerprint[:12]}…), "
            f"but the base given to merge into is {getattr(base_model.config, '_name_or_path', '') or 'another model'} "
            f"(fingerprint {fingerprint[:12]}…); merge it into the base it was trained on"
        )
    if not (stored.folder / WEIGHTS_FILE).is_file():
        raise UserFacingError(f"adapter {stored.name!r} has no {WEIGHTS_FILE}; only safetensors adapters are merged")
    visual = _visual_parts(stored)
    base_model, dequantized_from = _dequantized(base_model)

    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base_model, str(stored.folder), adapter_name=stored.name)
        merged = peft_model.merge_and_unload(safe_merge=True)
    except ValueError as err:  # safe_merge finds NaNs; peft refuses adapters it cannot apply
        raise UserFacingError(f"adapter {stored.name!r} could not be merged ({str(err)[:300]})") from None
    merged.eval()
    is_processor = hasattr(processing, "tokenizer") and hasattr(processing, "image_processor")
    model_class = "AutoModelForImageTextToText" if is_processor else "AutoModelForCausalLM"
    processing_class = "AutoProcessor" if is_processor else "AutoTokenizer"
    dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")

    with staged_folder(out_dir) as staging:
        merged.save_pretrained(str(staging))
        processing.save_pretrained(str(staging))
        for entry in visual.values():
            shutil.copyfile(stored.folder / entry["file"], staging / entry["file"])
        pickled = sorted(p.name for p in staging.rglob("*") if p.name.lower().endswith(_PICKLE_SUFFIXES))
        if pickled:
            raise UserFacingError(f"the merged model was written with pickle-format files ({', '.join(pickled)}); "
                                  "only safetensors are accepted")
        files = {p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        merged_card = {
            "format": MERGED_CARD_FORMAT,
            "what": f"{card.base_model} with the LoRA adapter {card.name!r} merged into its weights"
                    + (f"; its {' and '.join(visual)} copied beside them, not merged" if visual else ""),
            "base_model": card.base_model,
            "base_fingerprint": card.base_fingerprint,
            "dtype": dtype,
            "dequantized_from": dequantized_from,
            "load_with": {"model": model_class, "processing": processing_class},
            "merged_from": json.loads(card.to_json()),
            **({"visual": {**visual, "note": VISUAL_NOTE}} if visual else {}),
            "created": time.time(),
            "files": files,
        }
        # Written last: its presence says the folder is complete.
        (staging / MERGED_CARD_FILE).write_text(json.dumps(merged_card, ensure_ascii=False, indent=2), encoding="utf-8")
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return MergedModel(out_dir, stored.name, dtype, dequantized_from, model_class, processing_class, size,
                       tuple(visual))


def _visual_parts(stored: StoredAdapter) -> dict[str, dict[str, Any]]:
    """The card's visual entries ("projector", "soft_prompt"), each naming a file the folder holds."""
    entries = {key: value for key, value in json.loads(stored.card.to_json()).items() if key in VISUAL_PARTS and value}
    for key, entry in entries.items():
        if not (stored.folder / entry["file"]).is_file():
            raise UserFacingError(f"adapter {stored.name!r}: its card names a {key}, {entry['file']}, which "
                                  f"{stored.folder.name} does not hold; nothing was merged")
    return entries


def _refuse_adapted(model: Any) -> None:
    """A model with LoRA layers already in it is a serving model (or was used before): refuse."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise UserFacingError(
            "the model given to merge into already carries LoRA layers (is it the serving model?); "
            "merge into a fresh copy from mmchat.backends.registry.load_base_copy"
        )


def _dequantized(model: Any) -> tuple[Any, str | None]:
    """`(model, None)` for an unquantized model; a quantized one dequantized to bfloat16, and what it was."""
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(model.config, "quantization_config", None)
    if quantizer is None and qconfig is None:
        return model, None
    import torch

    label = _quantization_label(qconfig)
    try:
        model = model.dequantize(dtype=torch.bfloat16)
    except (NotImplementedError, ValueError, AttributeError) as err:
        raise UserFacingError(
            f"the base is quantized ({label}) and transformers cannot dequantize it ({str(err)[:200]}); "
            "merging needs a base in bfloat16/float32 or bitsandbytes 4-/8-bit"
        ) from None
    # Modules kept out of quantization (vision tower, projector, lm_head) keep their dtype:
    # one dtype for the whole folder.
    return model.to(getattr(torch, DEQUANTIZED_DTYPE)), label


def _quantization_label(qconfig: Any) -> str:
    if qconfig is None:
        return "quantized"
    get = qconfig.get if isinstance(qconfig, dict) else lambda key, default=None: getattr(qconfig, key, default)
    method = get("quant_method", "quantized")
    method = getattr(method, "value", method)
    if get("load_in_4bit", False):
        return f"{method} 4-bit ({get('bnb_4bit_quant_type', 'nf4')})"
    if get("load_in_8bit", False):
        return f"{method} 8-bit"
    return str(method)
