"""AdapterHost on a real model: adapters load once, switch per generation, never mix.

Real parts: the tiny random LLaVA from configs (its own instance: loading adapters changes
the model), real peft LoRA adapters with non-zero random weights saved as safetensors, and the
real streaming path. Outputs are compared greedily in fp32, so equal means bit-equal tokens.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from mmchat.backends.base import GenerationParams
from mmchat.backends.streaming import GenerateStream
from mmchat.errors import UserFacingError

GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0)
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Name three colours of the rainbow."}]}]
TARGETS = r".*language_model.*\.(q_proj|v_proj)"


def _tiny(model_cache_dir):
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    return LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)


def _make_adapter(model_cache_dir, folder: Path, seed: int) -> Path:
    """A LoRA adapter whose weights change the answer (init_lora_weights=False: B is not zero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = _tiny(model_cache_dir).model
    config = LoraConfig(r=4, lora_alpha=64, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_cache_dir):
    root = tmp_path_factory.mktemp("adapters")
    return {name: _make_adapter(model_cache_dir, root / name, seed) for name, seed in (("a", 1), ("b", 2))}


def _answer(backend, adapter=None) -> str:
    return "".join(backend.stream(backend.prepare(MESSAGES, [], adapter=adapter), GREEDY))


def test_each_adapter_answers_as_if_it_were_loaded_alone(model_cache_dir, adapters):
    from peft import PeftModel

    backend = _tiny(model_cache_dir)
    base = _answer(backend)
    for name, folder in adapters.items():
        backend.adapters.load(name, folder)
    answers = {name: _answer(backend, name) for name in ("a", "b")}
    assert len({base, answers["a"], answers["b"]}) == 3, (base, answers)
    assert _answer(backend, "base") == _answer(backend, None) == base  # the bare base, unchanged
    for name, folder in adapters.items():  # switching equals plain peft with that one adapter
        alone = _tiny(model_cache_dir)
        model = PeftModel.from_pretrained(alone.model, str(folder)).eval()
        prompt = alone.prepare(MESSAGES, [])
        assert "".join(GenerateStream(model, alone.processor.tokenizer, prompt.inputs, GREEDY)) == answers[name]
    assert backend.info.supports_adapters


def test_two_generations_on_different_adapters_at_once_get_their_own(model_cache_dir, adapters):
    backend = _tiny(model_cache_dir)
    for name, folder in adapters.items():
        backend.adapters.load(name, folder)
    expected = {name: _answer(backend, name) for name in ("a", "b", None)}
    results: dict = {}

    def ask(name):
        results[name] = [_answer(backend, name) for _ in range(3)]

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("a", "b", None)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert {name: set(answers) for name, answers in results.items()} == {k: {v} for k, v in expected.items()}


def test_unknown_adapters_and_pickled_weights_are_refused(model_cache_dir, adapters, tmp_path):
    backend = _tiny(model_cache_dir)
    with pytest.raises(UserFacingError, match=r"no adapter named 'nope' is loaded; choose one of: base"):
        backend.prepare(MESSAGES, [], adapter="nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapters["a"] / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserFacingError, match="pickled .bin weights are refused"):
        backend.adapters.load("p", pickled)
    with pytest.raises(UserFacingError, match="reserved for the bare base"):
        backend.adapters.load("base", adapters["a"])
    assert backend.adapters.names == []


def test_the_answer_records_its_adapter_and_regenerate_reuses_it(model_cache_dir, adapters, tmp_path):
    from mmchat.session import ChatSession

    backend = _tiny(model_cache_dir)
    backend.adapters.load("a", adapters["a"])
    session = ChatSession(backend, None, tmp_path / "up")
    first = list(session.send("Name three colours of the rainbow.", params=GREEDY, adapter="a"))[-1]
    assert session.history[-1].adapter == "a"
    again = list(session.regenerate(GREEDY))[-1]
    assert session.history[-1].adapter == "a" and again == first
    list(session.send("And two more?", params=GREEDY))
    assert session.history[-1].adapter is None
    with pytest.raises(UserFacingError, match="no adapter named 'zzz'"):
        list(session.send("hi", params=GREEDY, adapter="zzz"))
    assert [m.role for m in session.history] == ["user", "assistant"] * 2  # the refused one is not kept


def test_between_generations_the_model_is_the_bare_base_and_unload_removes_an_adapter(model_cache_dir, adapters):
    backend = _tiny(model_cache_dir)
    prompt = backend.prepare(MESSAGES, [])
    with torch.no_grad():
        before = backend.model(**prompt.inputs).logits
    backend.adapters.load("a", adapters["a"])
    _answer(backend, "a")
    with torch.no_grad():  # code that calls the model directly gets the base, not the last adapter
        assert torch.equal(backend.model(**prompt.inputs).logits, before)
    backend.adapters.unload("a")
    assert backend.adapters.names == []
    with pytest.raises(UserFacingError, match="no adapter named 'a' is loaded"):
        backend.prepare(MESSAGES, [], adapter="a")


def test_export_and_import_keep_each_answers_adapter(model_cache_dir, adapters, tmp_path):
    from mmchat.session import ChatSession

    backend = _tiny(model_cache_dir)
    backend.adapters.load("a", adapters["a"])
    session = ChatSession(backend, None, tmp_path / "up")
    first = list(session.send("Name three colours of the rainbow.", params=GREEDY, adapter="a"))[-1]
    list(session.send("And two more?", params=GREEDY))
    exported = session.export_download(tmp_path / "exports")
    restored = ChatSession(backend, None, tmp_path / "up2")
    restored.import_chat(exported)
    assert [m.adapter for m in restored.history if m.role == "assistant"] == ["a", None]
    restored.undo()  # back to the first answer, then regenerate it: same adapter, same answer
    assert list(restored.regenerate(GREEDY))[-1] == first and restored.history[-1].adapter == "a"


def test_adapters_with_saved_modules_switch_through_peft_and_still_answer_as_alone(model_cache_dir, tmp_path, adapters):
    """Fast switching covers plain LoRA only; an adapter that also saves a whole module (here
    the projector) goes through peft's own set_adapter and must give the same answers."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=TARGETS, init_lora_weights=False,
                        modules_to_save=["multi_modal_projector"])
    get_peft_model(_tiny(model_cache_dir).model, config).save_pretrained(str(tmp_path / "saved"))
    backend = _tiny(model_cache_dir)
    backend.adapters.load("a", adapters["a"])
    backend.adapters.load("saved", tmp_path / "saved")
    answers = {name: _answer(backend, name) for name in ("a", "saved", None)}
    assert backend.adapters._layers == []  # the peft path
    for name, folder in (("a", adapters["a"]), ("saved", tmp_path / "saved")):
        alone = _tiny(model_cache_dir)
        model = PeftModel.from_pretrained(alone.model, str(folder)).eval()
        prompt = alone.prepare(MESSAGES, [])
        assert "".join(GenerateStream(model, alone.processor.tokenizer, prompt.inputs, GREEDY)) == answers[name]
    assert answers[None] == _answer(_tiny(model_cache_dir))


def test_shipped_adapters_on_the_offline_model_answer_as_if_each_were_loaded_alone(model_cache_dir):
    """Real weights: SmolLM2 with the three shipped adapters (adapters/ in the project)."""
    from peft import PeftModel

    from mmchat.backends.builtin import load_smollm2
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS, PROJECT_DIR

    backend = OfflineBackend.from_preset(PRESETS["offline"], model_cache_dir)
    names = ("one-word", "caption", "json")
    for name in names:
        backend.adapters.load(name, PROJECT_DIR / "adapters" / name)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What colour is a ripe banana?"}]}]
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    answers = {name: "".join(backend.stream(backend.prepare(messages, [], adapter=name), params))
               for name in (*names, None)}
    assert len(set(answers.values())) == 4, answers
    for name in names:
        model, tokenizer = load_smollm2(model_cache_dir)
        alone = PeftModel.from_pretrained(model, str(PROJECT_DIR / "adapters" / name)).eval()
        prompt = backend.prepare(messages, [])
        assert "".join(GenerateStream(alone, tokenizer, prompt.inputs, params)) == answers[name], name
