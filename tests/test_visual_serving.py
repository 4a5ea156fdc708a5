"""A visual adapter (peft LoRA + a projector) served in chat on the offline model.

Real parts: the offline SmolLM2-135M (its own instance: loading adapters changes the model),
real peft LoRA adapters with non-zero random weights and a `Projector(TOKEN_DIM, 576)` with random
weights, saved as safetensors and published with cards into a real store, the real image
features (EfficientNet-Lite0) of real photos, the real streaming path. Greedy in fp32, so
"equal" means the same tokens. The card and store checks need no model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import pytest
import torch

from mmchat.adapters.card import CARD_FILE, AdapterCard, CardError
from mmchat.adapters.store import AdapterStore
from mmchat.backends.base import GenerationParams
from mmchat.backends.splice import PLACEHOLDER, placeholder_id
from mmchat.errors import UserFacingError
from mmchat.vision.features import FeatureSpec
from mmchat.vision.projector import PROJECTOR_FILE, Projector, save_projector

GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0)
K = 18  # FeatureSpec(grid=4).tokens_per_image
SPEC = FeatureSpec(grid=4)
TOKEN_DIM = SPEC.token_dim  # 1280 deep + the grid cell's colour
PROJECTOR_ENTRY = {"file": PROJECTOR_FILE, "feature_spec": dataclasses.asdict(SPEC),
                   "tokens_per_image": K, "feature_dim": TOKEN_DIM}


def _card(name: str, fingerprint: str = "0" * 64, projector: dict | None = None) -> AdapterCard:
    return AdapterCard(name=name, description=f"test adapter {name}", task="test", base_model="builtin:smollm2",
                       base_fingerprint=fingerprint, rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"),
                       projector=projector or {})


def _question(text: str, images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image"} for _ in range(images)), {"type": "text", "text": text}]}]


# ----- card and store (no model) --------------------------------------------------------------
def test_a_card_without_a_projector_reads_and_writes_as_before_and_one_with_it_round_trips():
    old = _card("plain")
    assert "projector" not in json.loads(old.to_json())
    assert AdapterCard.from_json(old.to_json()) == old
    visual = _card("eyes", projector=PROJECTOR_ENTRY)
    assert json.loads(visual.to_json())["projector"] == PROJECTOR_ENTRY
    assert AdapterCard.from_json(visual.to_json()) == visual
    for bad, field in (({**PROJECTOR_ENTRY, "file": "../projector.safetensors"}, "projector.file"),
                       ({**PROJECTOR_ENTRY, "file": "projector.bin"}, "projector.file"),
                       ({**PROJECTOR_ENTRY, "tokens_per_image": "18"}, "projector.tokens_per_image"),
                       ({**PROJECTOR_ENTRY, "feature_spec": {"grid": "4"}}, "projector.feature_spec"),
                       ("projector.safetensors", "projector is")):
        data = json.loads(visual.to_json())
        data["projector"] = bad
        with pytest.raises(CardError, match=field):
            AdapterCard.from_json(json.dumps(data))


def test_the_store_skips_a_visual_adapter_without_its_projector_file_naming_it(tmp_path):
    store = AdapterStore(tmp_path / "store")

    def weights(folder, projector=True):
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        (folder / "adapter_model.safetensors").write_bytes(b"stand-in: the store reads no weights")
        if projector:
            save_projector(Projector(TOKEN_DIM, 576, inner=8), folder / PROJECTOR_FILE)

    store.publish(_card("eyes", projector=PROJECTOR_ENTRY), weights)
    store.publish(_card("plain"), lambda folder: weights(folder, projector=False))
    found, skipped = store.scan()
    assert [a.name for a in found] == ["eyes", "plain"] and skipped == []
    assert found[0].card.projector == PROJECTOR_ENTRY and found[1].card.projector == {}
    (store.root / "eyes" / PROJECTOR_FILE).unlink()
    found, skipped = store.scan()
    assert [a.name for a in found] == ["plain"]
    assert skipped == [("eyes", f"eyes: its card names a projector, {PROJECTOR_FILE}, which the folder does not hold "
                                "(accepted: the safetensors file save_projector writes)")]


# ----- serving on the offline model -------------------------------------------------------------
def _publish(backend, store: AdapterStore, name: str, seed: int, cache_dir, projector: Projector | None = None):
    """A real peft LoRA adapter for the offline base (B not zero), with `projector` beside it."""
    from peft import LoraConfig, get_peft_model

    from mmchat.backends.registry import load_base_copy
    from mmchat.config import PRESETS

    model, _ = load_base_copy(PRESETS["offline"], cache_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)

    def write(folder):
        peft_model.save_pretrained(str(folder))
        if projector is not None:
            save_projector(projector, folder / PROJECTOR_FILE)

    card = _card(name, backend.base_fingerprint(), PROJECTOR_ENTRY if projector is not None else None)
    return store.publish(card, write).folder


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_cache_dir):
    """A fresh offline backend with "plain" (LoRA only) and "eyes" (LoRA + projector) loaded."""
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS

    backend = OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)
    store = AdapterStore(tmp_path_factory.mktemp("visual-adapters"))
    torch.manual_seed(3)
    projector = Projector(TOKEN_DIM, 576)
    with torch.no_grad():  # louder than token embeddings (norm ~3), so the image vectors change answers
        projector.linear_2.weight.mul_(8)
    folders = {"plain": _publish(backend, store, "plain", 1, model_cache_dir),
               "eyes": _publish(backend, store, "eyes", 2, model_cache_dir, projector)}
    for name, folder in folders.items():
        backend.adapters.load(name, folder)
    return backend, folders, projector


def _answer(backend, messages, images, adapter, params=GREEDY) -> str:
    return "".join(backend.stream(backend.prepare(messages, images, adapter=adapter), params))


@pytest.mark.slow
def test_a_visual_adapter_loads_its_projector_and_unload_drops_it(served):
    backend, folders, projector = served
    host = backend.adapters
    loaded = host.projector("eyes")
    assert isinstance(loaded, Projector) and loaded is not projector
    for name, value in projector.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert host.feature_spec("eyes").tokens_per_image == K
    assert host.projector("plain") is None and host.projector("base") is None and host.projector(None) is None
    host.unload("eyes")
    assert host.projector("eyes") is None and host.names == ["plain"]
    host.load("eyes", folders["eyes"])
    assert host.projector("eyes") is not None and host.names == ["plain", "eyes"]


@pytest.mark.slow
def test_chat_prepare_with_the_visual_adapter_splices_projected_features_at_the_placeholders(
        served, cat_image, coffee_image, model_cache_dir):
    from mmchat.vision.features import shared_features

    backend, _, projector = served
    placeholder = placeholder_id(backend.tokenizer)
    typed = f"Compare them. {PLACEHOLDER} is not an image."
    prompt = backend.prepare(_question(typed, images=2), [cat_image, coffee_image], adapter="eyes")
    ids, embeds = prompt.inputs["input_ids"], prompt.inputs["inputs_embeds"]
    assert set(prompt.inputs) == {"input_ids", "attention_mask", "inputs_embeds"}
    assert prompt.prompt_tokens == ids.shape[-1] == embeds.shape[1] and embeds.shape[-1] == 576
    positions = (ids[0] == placeholder).nonzero().flatten().tolist()
    assert len(positions) == 2 * K  # the typed placeholder is inert
    first, second = positions[:K], positions[K:]
    assert first == list(range(first[0], first[0] + K)) and second == list(range(second[0], second[0] + K))
    text = backend.tokenizer.decode(ids[0])
    assert "[Image 1: " + PLACEHOLDER * K + "]" in text and "[Image 2: " + PLACEHOLDER * K + "]" in text
    assert backend.cache_dir == model_cache_dir  # from_preset's: the features share the classifier's cache
    features = shared_features(model_cache_dir, SPEC).encode([cat_image, coffee_image])
    with torch.no_grad():
        expected = projector(features).reshape(-1, 576)
        plain = backend.model.get_input_embeddings()(ids)
    assert torch.allclose(embeds[0, positions], expected, atol=1e-6)
    others = [i for i in range(ids.shape[-1]) if i not in set(positions)]
    assert torch.equal(embeds[0, others], plain[0, others])


@pytest.mark.slow
def test_without_the_visual_adapter_the_prompt_is_todays_label_line_to_the_token(served, cat_image):
    from mmchat.backends.base import defuse_special_tokens
    from mmchat.backends.offline import flatten

    backend, _, _ = served
    messages = _question(f"What is in the photo? {PLACEHOLDER}")
    flat = flatten(defuse_special_tokens(messages, backend.tokenizer.all_special_tokens),
                   backend.pathway.render([cat_image]))
    today = backend.tokenizer.apply_chat_template(flat, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)
    for adapter in (None, "base", "plain"):
        prompt = backend.prepare(messages, [cat_image], adapter=adapter)
        assert set(prompt.inputs) == {"input_ids", "attention_mask"}
        assert torch.equal(prompt.inputs["input_ids"], today["input_ids"]) and prompt.prompt_tokens == today[
            "input_ids"].shape[-1]
    assert "a photo of" in backend.tokenizer.decode(today["input_ids"][0])


@pytest.mark.slow
def test_generation_reads_the_embeddings_token_for_token_and_chunked_prefill_agrees(served, cat_image, monkeypatch):
    import mmchat.backends.streaming as streaming

    backend, _, _ = served
    prompt = backend.prepare(_question("What colour is it?"), [cat_image], adapter="eyes")
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    streamed = "".join(backend.stream(prompt, params))
    ids, embeds = prompt.inputs["input_ids"], prompt.inputs["inputs_embeds"]
    generated: list[int] = []
    with torch.no_grad(), backend.adapters.activate("eyes") as model:  # a manual greedy loop, no cache
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        table = model.get_input_embeddings()
        from_ids = model(input_ids=ids).logits[0, -1]
        for _ in range(params.max_new_tokens):
            current = torch.cat([embeds, table(torch.tensor([generated], dtype=torch.long))], dim=1)
            logits = model(inputs_embeds=current).logits[0, -1]
            if not generated:
                assert not torch.allclose(logits, from_ids, atol=1e-3)  # the image vectors matter
            generated.append(int(logits.argmax()))
            if generated[-1] in eos:
                break
    assert streamed == backend.tokenizer.decode(generated, skip_special_tokens=True)
    ids_only = dataclasses.replace(prompt, inputs={k: v for k, v in prompt.inputs.items() if k != "inputs_embeds"})
    assert "".join(backend.stream(ids_only, params)) != streamed, streamed  # the answer reads the image vectors
    monkeypatch.setattr(streaming, "PREFILL_CHUNK", 16)
    assert prompt.prompt_tokens > 3 * 16
    chunked = backend.stream(prompt, params)
    assert "".join(chunked) == streamed and chunked.stats.prompt_tokens == prompt.prompt_tokens


@pytest.mark.slow
def test_two_threads_with_the_visual_and_another_adapter_each_get_their_own_answer(served, cat_image):
    backend, _, _ = served
    messages = _question("Describe the photo in one sentence.")
    expected = {name: _answer(backend, messages, [cat_image], name) for name in ("eyes", "plain")}
    assert expected["eyes"] != expected["plain"], expected
    results: dict = {}

    def ask(name):
        results[name] = [_answer(backend, messages, [cat_image], name) for _ in range(2)]

    threads = [threading.Thread(target=ask, args=(name,)) for name in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == {name: [answer, answer] for name, answer in expected.items()}


@pytest.mark.slow
def test_a_projector_of_the_wrong_shape_refuses_to_load_naming_the_file_and_the_others_stay(
        served, tmp_path, cat_image):
    backend, folders, _ = served
    host = backend.adapters
    before = _answer(backend, _question("What is it?"), [cat_image], "eyes")
    wrong = tmp_path / "wrong"
    shutil.copytree(folders["eyes"], wrong)
    card = json.loads((wrong / CARD_FILE).read_text())
    (wrong / CARD_FILE).write_text(json.dumps({**card, "name": "wrong"}))
    save_projector(Projector(TOKEN_DIM, 320), wrong / PROJECTOR_FILE)
    with pytest.raises(UserFacingError, match=rf"adapter 'wrong': {PROJECTOR_FILE}: .*576-d embeddings"):
        host.load("wrong", wrong)
    (wrong / PROJECTOR_FILE).write_bytes(b"\x80\x04 a pickle, not safetensors")
    with pytest.raises(UserFacingError, match=rf"{PROJECTOR_FILE}: not a readable safetensors projector"):
        host.load("wrong", wrong)
    assert host.names == ["plain", "eyes"] and host.projector("wrong") is None
    assert "wrong" not in host.model.peft_config
    assert _answer(backend, _question("What is it?"), [cat_image], "eyes") == before


@pytest.mark.slow
def test_stop_during_a_long_embeddings_prefill_ends_after_the_chunk_in_progress(served, cat_image, monkeypatch):
    """Counted in forward passes, not seconds (timings on a shared 2-core machine vary)."""
    import mmchat.backends.streaming as streaming

    backend, _, _ = served
    monkeypatch.setattr(streaming, "PREFILL_CHUNK", 64)
    long_text = "Describe the colours, the shapes and where each thing stands in the photo. " * 20
    prompt = backend.prepare(_question(long_text), [cat_image], adapter="eyes")
    assert prompt.prompt_tokens > 4 * 64
    stop = threading.Event()
    calls = []
    real_forward = backend.model.forward

    def forward(*args, **kwargs):
        calls.append((kwargs.get("input_ids"), kwargs["inputs_embeds"].shape[1]))
        stop.set()  # pressed while the first chunk is being read
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(backend.model, "forward", forward)
    stream = backend.stream(prompt, GenerationParams(max_new_tokens=8, temperature=0.0), stop)
    assert "".join(stream) == ""
    assert calls == [(None, 64)]
    assert stream.stats.finish_reason == "cancelled" and stream.stats.output_tokens == 0
