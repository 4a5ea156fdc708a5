"""Backend loading: NF4 quantization with real bitsandbytes (on CPU here; a GPU is not needed
to check which modules get quantized), local-dir sources, clear errors, and preset choice."""

from __future__ import annotations

import threading

import pytest

from mmchat.backends.base import GenerationParams
from mmchat.backends.llava import NF4_SKIP_MODULES, LlavaBackend
from mmchat.backends.registry import load_backend, resolve_preset
from mmchat.config import PRESETS, ModelConfig, ModelPreset
from mmchat.errors import ModelUnavailable


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory, tiny_backend):
    path = tmp_path_factory.mktemp("tiny-llava")
    tiny_backend.model.save_pretrained(path)
    tiny_backend.processor.save_pretrained(path)
    return path


def text_prompt(backend, text="hello"):
    return backend.prepare([{"role": "user", "content": [{"type": "text", "text": text}]}], [])


def test_local_dir_source_loads_and_streams(tiny_llava_dir):
    preset = ModelPreset(name="local", kind="llava", source=f"local-dir:{tiny_llava_dir}", device="cpu")
    backend = LlavaBackend.from_preset(preset, tiny_llava_dir)
    stream = backend.stream(text_prompt(backend), GenerationParams(max_new_tokens=6, temperature=0))
    assert "".join(stream) and stream.stats.output_tokens >= 1


def test_nf4_quantizes_the_language_model_but_not_vision_or_head(tiny_llava_dir):
    import bitsandbytes as bnb

    preset = ModelPreset(name="local-nf4", kind="llava", source=f"local-dir:{tiny_llava_dir}",
                         quantization="nf4", device="cpu", dtype="float32")
    backend = LlavaBackend.from_preset(preset, tiny_llava_dir)
    modules = dict(backend.model.named_modules())
    quantized = [n for n, m in modules.items() if isinstance(m, bnb.nn.Linear4bit)]
    assert any("language_model" in n and n.endswith("q_proj") for n in quantized)
    assert not any(n.startswith(tuple(NF4_SKIP_MODULES)) for n in quantized), quantized
    weight = modules[next(n for n in quantized if n.endswith("q_proj"))].weight
    assert weight.quant_state.quant_type == "nf4"
    assert backend.info.quantization == "nf4"
    # and it still generates, with an image
    from PIL import Image

    prompt = backend.prepare(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}],
        [Image.new("RGB", (40, 40), "red")],
    )
    assert prompt.prompt_tokens > 16
    stream = backend.stream(prompt, GenerationParams(max_new_tokens=4, temperature=0))
    list(stream)
    assert stream.stats.output_tokens >= 1


def test_missing_local_dir_names_preset_and_what_to_do(tmp_path):
    preset = ModelPreset(name="mine", kind="llava", source=f"local-dir:{tmp_path}/nope")
    with pytest.raises(ModelUnavailable, match=r"preset 'mine'.*does not exist"):
        LlavaBackend.from_preset(preset, tmp_path)


def test_hub_preset_without_weights_fails_with_guidance(tmp_path, monkeypatch):
    # The hub is unreachable here (HF_HUB_OFFLINE=1): this is exactly the user-facing path.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailable) as info:
        LlavaBackend.from_preset(PRESETS["llava-interleave-0.5b"], tmp_path)
    message = str(info.value)
    assert "llava-interleave-0.5b" in message and "hf-hub:llava-hf/llava-interleave-qwen-0.5b-hf" in message
    assert "--preset offline" in message


def test_gpu_preset_without_cuda_says_so(tmp_path):
    with pytest.raises(ModelUnavailable, match="needs a CUDA GPU"):
        LlavaBackend.from_preset(PRESETS["llava-1.5-7b-nf4"], tmp_path)


def test_auto_picks_offline_without_cuda_and_overrides_apply():
    assert resolve_preset(ModelConfig(preset="auto")).name == "offline"
    preset = resolve_preset(ModelConfig(preset="llava-1.5-7b-nf4", source="local-dir:/m", quantization="none"))
    assert (preset.source, preset.quantization) == ("local-dir:/m", "none")


def test_auto_falls_back_to_offline_when_gpu_preset_cannot_load(monkeypatch, model_cache_dir):
    import mmchat.backends.registry as registry

    monkeypatch.setattr(registry, "cuda_available", lambda: True)  # pretend: no GPU here
    offline_calls = []
    monkeypatch.setitem(registry.BACKEND_LOADERS, "offline", lambda p, c: offline_calls.append(p.name) or "offline-backend")
    backend = load_backend(ModelConfig(preset="auto", cache_dir=str(model_cache_dir)))
    assert backend == "offline-backend" and offline_calls == ["offline"]
    with pytest.raises(ModelUnavailable):  # asked for by name: no silent fallback
        load_backend(ModelConfig(preset="llava-1.5-7b-nf4", cache_dir=str(model_cache_dir)))


def test_stop_event_set_before_start_yields_nothing_new(tiny_backend):
    stop = threading.Event()
    stop.set()
    stream = tiny_backend.stream(text_prompt(tiny_backend), GenerationParams(max_new_tokens=50, temperature=0), stop)
    list(stream)
    assert stream.stats.finish_reason == "cancelled" and stream.stats.output_tokens <= 1


def test_the_loaded_preset_keeps_its_overrides_and_names_an_auto_fallback():
    """What a training run or a merge loads: the base that serves, not the configured name."""
    from mmchat.backends.registry import loaded_preset
    from mmchat.config import ModelConfig

    config = ModelConfig(preset="tiny", source="local-dir:/models/tiny")
    assert loaded_preset(config, "tiny").source == "local-dir:/models/tiny"
    fallback = loaded_preset(ModelConfig(preset="auto"), "offline")  # auto picked the GPU preset, then fell back
    assert fallback.name == "offline" and fallback.source == PRESETS["offline"].source
