"""Merging an adapter into a copy of the base: the merged folder answers like base + adapter,
loads with plain transformers (no peft), holds no pickles, and the serving model is untouched.

Real parts: the offline SmolLM2-135M (shipped weights, fp32) and the tiny random LLaVA (with a
real photo through its processor), real peft LoRA adapters with non-zero weights published in
a real AdapterStore, `load_base_copy` for the copy, and, for the 4-bit path, the tiny LLaVA
quantized to NF4 by bitsandbytes on CPU. Logits are compared in fp32 with a tight tolerance
(bf16 after dequantizing, with a tolerance well below the adapter's effect).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmchat.adapters.card import AdapterCard, base_fingerprint
from mmchat.adapters.merge import MERGED_CARD_FILE, merge_adapter
from mmchat.adapters.store import AdapterStore
from mmchat.backends.registry import load_base_copy
from mmchat.config import PRESETS
from mmchat.errors import UserFacingError

TINY_TARGETS = r".*language_model.*\.(q_proj|v_proj)"


def _fingerprint(model, processing) -> str:
    return base_fingerprint(model.config.to_dict(), getattr(processing, "tokenizer", processing).get_vocab())


def _adapt(model, targets, seed: int, modules_to_save=None):
    """`model` with a LoRA adapter whose weights change its output (B is not zero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=targets, init_lora_weights=False,
                        modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # a "trained" projector copy, so modules_to_save matters too
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.5)
    return peft_model.eval()


def _publish(store: AdapterStore, name: str, peft_model, fingerprint: str, base_model: str, targets):
    card = AdapterCard(name=name, description="test adapter", task="test", base_model=base_model,
                       base_fingerprint=fingerprint, rank=4, alpha=32,
                       target_modules=(targets,) if isinstance(targets, str) else tuple(targets))
    return store.publish(card, peft_model.save_pretrained)


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


def _assert_standalone(folder: Path) -> dict:
    names = {p.name for p in folder.iterdir()}
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names
    assert "model.safetensors" in names and "adapter_config.json" not in names, names
    card = json.loads((folder / MERGED_CARD_FILE).read_text())
    assert set(card["files"]) <= names and card["merged_from"]["name"] in card["what"]
    return card


def test_merged_smollm2_equals_base_plus_adapter_and_loads_without_peft(tmp_path, model_cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset = PRESETS["offline"]
    serving, tokenizer = load_base_copy(preset, model_cache_dir)
    fingerprint = _fingerprint(serving, tokenizer)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    serving_before = _logits(serving, inputs)
    targets = ["q_proj", "v_proj"]
    reference = _adapt(load_base_copy(preset, model_cache_dir)[0], targets, seed=1)  # base + adapter, unmerged
    store = AdapterStore(tmp_path / "adapters")
    stored = _publish(store, "colourful", reference, fingerprint, "builtin:smollm2", targets)

    copy, copy_tokenizer = load_base_copy(preset, model_cache_dir)
    result = merge_adapter(copy, copy_tokenizer, stored, tmp_path / "merged")

    card = _assert_standalone(result.folder)
    assert (result.dtype, result.dequantized_from, result.model_class) == ("float32", None, "AutoModelForCausalLM")
    assert card["base_fingerprint"] == fingerprint and "AutoModelForCausalLM" in result.summary
    merged = AutoModelForCausalLM.from_pretrained(result.folder, local_files_only=True).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    merged_logits = _logits(merged, inputs)
    expected = _logits(reference, inputs)
    assert (expected - serving_before).abs().max() > 0.1  # the adapter changes the answer
    # W + BA in one matrix vs W and BA applied apart: fp32 sums in another order (logits ~10-20;
    # 1.9e-4 apart on some CPUs, 1e-4 on others)
    torch.testing.assert_close(merged_logits, expected, rtol=1e-4, atol=5e-4)
    reloaded = AutoTokenizer.from_pretrained(result.folder, local_files_only=True)
    assert reloaded.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"].tolist() == \
        inputs["input_ids"].tolist()
    assert torch.equal(_logits(serving, inputs), serving_before)  # the serving model is untouched


def test_merged_tiny_llava_equals_base_plus_adapter_with_an_image(tmp_path, model_cache_dir, cat_image):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    preset = PRESETS["tiny"]
    serving, processor = load_base_copy(preset, model_cache_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[cat_image], return_tensors="pt")
    serving_before = _logits(serving, inputs)
    reference = _adapt(load_base_copy(preset, model_cache_dir)[0], TINY_TARGETS, seed=2,
                       modules_to_save=["multi_modal_projector"])
    store = AdapterStore(tmp_path / "adapters")
    stored = _publish(store, "looker", reference, _fingerprint(serving, processor), "builtin:tiny-llava", TINY_TARGETS)

    result = merge_adapter(*load_base_copy(preset, model_cache_dir), stored, tmp_path / "merged")

    _assert_standalone(result.folder)
    assert (result.model_class, result.processing_class) == ("AutoModelForImageTextToText", "AutoProcessor")
    merged = AutoModelForImageTextToText.from_pretrained(result.folder, local_files_only=True).eval()
    reprocessed = AutoProcessor.from_pretrained(result.folder, local_files_only=True)(
        text=[prompt], images=[cat_image], return_tensors="pt")
    assert torch.equal(reprocessed["input_ids"], inputs["input_ids"])
    expected = _logits(reference, inputs)
    assert (expected - serving_before).abs().max() > 0.1
    torch.testing.assert_close(_logits(merged, reprocessed), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_logits(serving, inputs), serving_before)


def test_a_4bit_base_is_merged_into_a_dequantized_bf16_copy(tmp_path, model_cache_dir):
    """NF4 through bitsandbytes on CPU (slow in general, quick for the tiny model)."""
    import dataclasses

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmchat.backends.builtin import build_tiny_llava

    model, processor = build_tiny_llava(model_cache_dir)
    source = tmp_path / "tiny-source"
    model.save_pretrained(source)
    processor.save_pretrained(source)
    # The GPU preset's own loading code (NF4, vision tower/projector/lm_head kept), pointed at CPU.
    preset = dataclasses.replace(PRESETS["llava-1.5-7b-nf4"], source=f"local-dir:{source}", device="cpu",
                                 dtype="float32")
    copy, copy_processor = load_base_copy(preset, model_cache_dir)
    assert type(copy.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    fingerprint = _fingerprint(copy, copy_processor)  # the 4-bit base's, as QLoRA training would record
    store = AdapterStore(tmp_path / "adapters")
    stored = _publish(store, "quantized", _adapt(model, TINY_TARGETS, seed=3), fingerprint, "local 4-bit", TINY_TARGETS)

    result = merge_adapter(copy, copy_processor, stored, tmp_path / "merged")

    assert result.dtype == "bfloat16" and result.dequantized_from == "bitsandbytes 4-bit (nf4)"
    assert "dequantized bfloat16 copy" in result.summary
    saved_config = json.loads((result.folder / "config.json").read_text())
    assert "quantization_config" not in saved_config
    merged = AutoModelForImageTextToText.from_pretrained(result.folder, local_files_only=True).eval()
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    inputs = {"input_ids": copy_processor.tokenizer("Hello there, what is this?", return_tensors="pt")["input_ids"]}
    dequantized = load_base_copy(preset, model_cache_dir)[0].dequantize(dtype=torch.bfloat16).to(torch.bfloat16)
    base_logits = _logits(dequantized, inputs)
    expected = _logits(PeftModel.from_pretrained(dequantized, str(stored.folder)).eval(), inputs)
    assert (expected - base_logits).abs().max() > 0.2
    torch.testing.assert_close(_logits(merged, inputs), expected, rtol=0.02, atol=0.05)


def test_merging_refuses_a_wrong_base_an_adapted_model_and_an_existing_folder(tmp_path, model_cache_dir):
    preset = PRESETS["tiny"]
    model, processor = load_base_copy(preset, model_cache_dir)
    store = AdapterStore(tmp_path / "adapters")
    other = _publish(store, "elsewhere", _adapt(load_base_copy(preset, model_cache_dir)[0], TINY_TARGETS, seed=4),
                     "b" * 64, "hf-hub:org/other-model", TINY_TARGETS)
    with pytest.raises(UserFacingError, match=r"trained on hf-hub:org/other-model \(fingerprint bbbbbbbbbbbb…\), "
                                              r"but the base given to merge into is .*\(fingerprint [0-9a-f]{12}…\)"):
        merge_adapter(model, processor, other, tmp_path / "out")
    ours = _publish(store, "ours", _adapt(load_base_copy(preset, model_cache_dir)[0], TINY_TARGETS, seed=5),
                    _fingerprint(model, processor), "builtin:tiny-llava", TINY_TARGETS)
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserFacingError, match="already exists"):
        merge_adapter(model, processor, ours, tmp_path / "taken")
    from mmchat.backends.llava import LlavaBackend

    serving = LlavaBackend.from_preset(preset, model_cache_dir)
    serving.adapters.load("ours", ours.folder)
    with pytest.raises(UserFacingError, match="already carries LoRA layers"):
        merge_adapter(serving.adapters.base_model, serving.processor, ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters", "taken"]  # no staging leftovers


def test_a_visual_adapters_projector_is_copied_beside_the_merged_weights_and_recorded(tmp_path, model_cache_dir):
    """The projector is not a weight of the model: it is copied unchanged, and the merged card
    says so and keeps its entry (feature spec and all) for mmchat's image pathway."""
    from test_visual_serving import PROJECTOR_ENTRY, TOKEN_DIM
    from transformers import AutoModelForCausalLM

    from mmchat.vision.projector import PROJECTOR_FILE, Projector, load_projector, save_projector

    preset = PRESETS["offline"]
    model, tokenizer = load_base_copy(preset, model_cache_dir)
    fingerprint = _fingerprint(model, tokenizer)
    targets = ["q_proj", "v_proj"]
    reference = _adapt(load_base_copy(preset, model_cache_dir)[0], targets, seed=6)
    torch.manual_seed(6)
    projector = Projector(TOKEN_DIM, 576)

    def write(folder):
        reference.save_pretrained(str(folder))
        save_projector(projector, folder / PROJECTOR_FILE)

    card = AdapterCard(name="eyes", description="a visual adapter", task="vqa", base_model="builtin:smollm2",
                       base_fingerprint=fingerprint, rank=4, alpha=32, target_modules=tuple(targets),
                       projector=PROJECTOR_ENTRY)
    store = AdapterStore(tmp_path / "adapters")
    stored = store.publish(card, write)

    result = merge_adapter(model, tokenizer, stored, tmp_path / "merged")

    merged_card = _assert_standalone(result.folder)
    copied = result.folder / PROJECTOR_FILE
    assert copied.read_bytes() == (stored.folder / PROJECTOR_FILE).read_bytes()
    assert merged_card["visual"]["projector"] == PROJECTOR_ENTRY and "not merged" in merged_card["visual"]["note"]
    assert "projector copied beside them, not merged" in merged_card["what"]
    assert result.visual_files == ("projector",) and "projector is copied beside the weights" in result.summary
    loaded = load_projector(copied, TOKEN_DIM, 576)  # the host's loader reads it as it reads the adapter's
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in projector.state_dict().items())
    inputs = tokenizer("Name a colour.", return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(result.folder, local_files_only=True).eval()
    torch.testing.assert_close(_logits(merged, inputs), _logits(reference, inputs), rtol=1e-4, atol=5e-4)

    (stored.folder / PROJECTOR_FILE).unlink()  # a folder that lost its projector is refused, nothing written
    with pytest.raises(UserFacingError, match=rf"adapter 'eyes': its card names a projector, {PROJECTOR_FILE}, "
                                              "which eyes does not hold; nothing was merged"):
        merge_adapter(load_base_copy(preset, model_cache_dir)[0], tokenizer, stored, tmp_path / "again")
    assert not (tmp_path / "again").exists()
