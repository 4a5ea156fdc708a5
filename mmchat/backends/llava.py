"""LLaVA-style vision-language backend on transformers.

Loads any `AutoModelForImageTextToText` + `AutoProcessor` pair from `hf-hub:ID` or
`local-dir:PATH` — 4-bit NF4 via bitsandbytes on CUDA (vision tower, projector and lm_head kept
unquantized), bf16/fp32 otherwise — or the tiny random LLaVA built from configs for tests.
Prompts are rendered with the model's own chat template; several images may appear anywhere in
the conversation. Streaming is `mmchat.backends.streaming.GenerateStream`.

It does not manage conversations, LoRA adapters or retrieval; it only turns a rendered prompt
into a token stream.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from mmchat.backends.base import (
    Backend,
    BackendInfo,
    GenerationParams,
    PreparedPrompt,
    PromptMessage,
    TextStream,
    defuse_special_tokens,
)
from mmchat.adapters.host import AdapterHost
from mmchat.backends.streaming import GenerateStream
from mmchat.config import ModelPreset, split_source
from mmchat.errors import ModelUnavailable

log = logging.getLogger(__name__)

# transformers 5 matches skip-list entries by full module prefix; a bare "vision_tower" is
# silently ignored and the vision tower would be quantized too.
NF4_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def resolve_device(preset: ModelPreset) -> str:
    if preset.device == "cuda" or (preset.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelUnavailable(
                f"preset {preset.name!r} needs a CUDA GPU and none was found; "
                "use --preset offline (CPU, shipped weights) or --preset llava-interleave-0.5b (CPU, hub)"
            )
        return "cuda"
    return "cpu"


def resolve_dtype(preset: ModelPreset, device: str) -> torch.dtype:
    if preset.dtype != "auto":
        return getattr(torch, preset.dtype)
    return torch.bfloat16 if device == "cuda" else torch.float32


def nf4_config(compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=NF4_SKIP_MODULES,
    )


def load_pretrained(preset: ModelPreset, cache_dir: Path) -> tuple[Any, Any]:
    """Model and processor for a hub or local-dir preset, with a message on failure."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    scheme, location = split_source(preset.source)
    if scheme == "local-dir" and not Path(location).expanduser().is_dir():
        raise ModelUnavailable(
            f"preset {preset.name!r}: local directory {location!r} does not exist; "
            "point --model-source at a folder holding config.json and *.safetensors"
        )
    device = resolve_device(preset)
    dtype = resolve_dtype(preset, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False, "use_safetensors": True}
    if preset.quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(dtype)
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    source = str(Path(location).expanduser()) if scheme == "local-dir" else location
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelUnavailable(
            f"preset {preset.name!r}: could not load weights from {preset.source!r} ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0][:200]}). With no internet, download the model once elsewhere and use "
            "--model-source local-dir:PATH, or run --preset offline."
        ) from err
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    return model, processor


class LlavaBackend(Backend):
    def __init__(self, model: Any, processor: Any, info: BackendInfo) -> None:
        self.model = model
        self.processor = processor
        self.info = dataclasses.replace(info, supports_adapters=True)
        self.adapters = AdapterHost(model)  # LoRA adapters on this model, one generation at a time
        self.device = next(model.parameters()).device
        self._vision_dtype = self._find_vision_dtype(model)

    @staticmethod
    def _find_vision_dtype(model: Any) -> torch.dtype:
        tower = getattr(getattr(model, "model", model), "vision_tower", None)
        for module in (tower, model):
            if module is not None:
                for param in module.parameters():
                    if param.is_floating_point():
                        return param.dtype
        return torch.float32

    @classmethod
    def from_preset(cls, preset: ModelPreset, cache_dir: Path, loaded: tuple[Any, Any] | None = None) -> "LlavaBackend":
        """`loaded`: a `(model, processor)` already loaded (a trainer's copy) to serve instead."""
        if loaded is not None:
            model, processor = loaded
        elif preset.kind == "tiny":
            from mmchat.backends.builtin import build_tiny_llava

            model, processor = build_tiny_llava(cache_dir)
        else:
            model, processor = load_pretrained(preset, cache_dir)
        param = next(model.parameters())
        info = BackendInfo(
            preset=preset.name,
            kind=preset.kind,
            source=preset.source,
            device=str(param.device),
            dtype=str(resolve_dtype(preset, param.device.type)).removeprefix("torch."),
            quantization=preset.quantization,
            context_length=preset.context_length,
            answer=preset.answer,
            languages=preset.languages,
            description=preset.description,
        )
        return cls(model, processor, info)

    def prepare(
        self, messages: Sequence[PromptMessage], images: Sequence[Any], adapter: str | None = None
    ) -> PreparedPrompt:
        adapter = self.adapters.check(adapter)
        special = [*self.processor.tokenizer.all_special_tokens, getattr(self.processor, "image_token", "<image>")]
        messages = defuse_special_tokens(messages, special)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt], images=list(images) or None, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._vision_dtype)
        return PreparedPrompt(dict(inputs), int(inputs["input_ids"].shape[-1]), adapter)

    def stream(
        self, prompt: PreparedPrompt, params: GenerationParams, stop: threading.Event | None = None
    ) -> TextStream:
        return GenerateStream(self.adapters.model, self.processor.tokenizer, prompt.inputs, params, stop,
                              hold=lambda: self.adapters.activate(prompt.adapter))

    def base_fingerprint(self) -> str:
        return self.adapters.fingerprint(self.processor.tokenizer.get_vocab())

    def memory_summary(self) -> str:
        footprint = self.model.get_memory_footprint() / 2**20
        text = f"weights {footprint:,.0f} MiB"
        if self.device.type == "cuda":
            text += f", CUDA peak {torch.cuda.max_memory_allocated(self.device) / 2**20:,.0f} MiB"
        return text
