"""Adapter zips: export → import round trip into another store gives the same answers, and each
kind of bad zip is refused with a message naming the problem, leaving the store as it was.

Real parts: the tiny random LLaVA (built from configs) behind the real backend and its adapter
host, real peft LoRA adapters saved as safetensors and published in a real AdapterStore, real
zip files written with `zipfile` (the bad ones are the good one with a member changed).
"""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from mmchat.adapters.bundle import ZipLimits, export_adapter_zip, import_adapter_zip, module_shapes
from mmchat.adapters.card import AdapterCard, base_fingerprint
from mmchat.adapters.store import AdapterStore
from mmchat.backends.base import GenerationParams
from mmchat.errors import UserFacingError

TARGETS = r".*language_model.*\.(q_proj|v_proj)"
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Name three colours of the rainbow."}]}]
GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0)
W = "adapter_model.safetensors"
C = "adapter_config.json"
CARD = "adapter_card.json"


@pytest.fixture(scope="module")
def backend(model_cache_dir):
    """The serving tiny LLaVA (its own instance: adapters get loaded on it)."""
    from mmchat.backends.llava import LlavaBackend
    from mmchat.config import PRESETS

    return LlavaBackend.from_preset(PRESETS["tiny"], model_cache_dir)


@pytest.fixture(scope="module")
def source(tmp_path_factory, backend, model_cache_dir):
    """A store with one real adapter for the tiny base, and that adapter exported as a zip."""
    from peft import LoraConfig, get_peft_model

    from mmchat.backends.builtin import build_tiny_llava

    root = tmp_path_factory.mktemp("source")
    torch.manual_seed(7)
    peft_model = get_peft_model(build_tiny_llava(model_cache_dir)[0],
                                LoraConfig(r=4, lora_alpha=64, target_modules=TARGETS, init_lora_weights=False))
    card = AdapterCard(name="shouty", description="answers loudly", task="test", base_model="builtin:tiny",
                       base_fingerprint=backend.base_fingerprint(), rank=4, alpha=64, target_modules=(TARGETS,))
    stored = AdapterStore(root / "store").publish(card, peft_model.save_pretrained)
    return stored, export_adapter_zip(stored, root / "shouty.zip")


def _members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _zip(path: Path, members: dict, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():  # a name or a ZipInfo
            zf.writestr(name, data)
    return path


def _answer(backend, adapter=None) -> str:
    return "".join(backend.stream(backend.prepare(MESSAGES, [], adapter=adapter), GREEDY))


def _import(backend, zip_path, store, limits=ZipLimits(), **kwargs):
    return import_adapter_zip(zip_path, store, backend.base_fingerprint(), module_shapes(backend.adapters.base_model),
                              limits, base_model="builtin:tiny", **kwargs)


def test_export_then_import_into_another_store_answers_the_same(tmp_path, backend, source):
    stored, zip_path = source
    assert sorted(_members(zip_path)) == [f"shouty/{n}" for n in sorted(("README.md", C, CARD, W))]
    assert export_adapter_zip(stored, tmp_path / "again.zip").read_bytes() == zip_path.read_bytes()  # deterministic
    store = AdapterStore(tmp_path / "other")
    imported = _import(backend, zip_path, store)
    assert imported.card == stored.card and imported.folder == tmp_path / "other" / "shouty"
    assert (imported.folder / W).read_bytes() == (stored.folder / W).read_bytes()
    assert [a.name for a in store.compatible(backend.base_fingerprint())[0]] == ["shouty"]
    renamed = _import(backend, zip_path, store, name="shouty-copy")
    assert renamed.card.name == "shouty-copy" and renamed.card.base_fingerprint == stored.card.base_fingerprint

    base = _answer(backend)
    backend.adapters.load("original", stored.folder)
    backend.adapters.load(imported.name, imported.folder)
    try:
        assert _answer(backend, "shouty") == _answer(backend, "original") != base
    finally:
        backend.adapters.unload("original")
        backend.adapters.unload("shouty")


def test_a_zip_without_a_card_gets_one_only_when_its_shapes_fit_the_loaded_base(tmp_path, backend, source):
    stored, zip_path = source
    members = {name.split("/")[-1]: data for name, data in _members(zip_path).items() if not name.endswith(CARD)}
    cardless = _zip(tmp_path / "My Adapter (v2).zip", members)  # top-level files, no folder
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(UserFacingError, match="no adapter_card.json, and its LoRA shapes could not all be checked"):
        import_adapter_zip(cardless, store, backend.base_fingerprint(),
                           {n for n, _ in backend.adapters.base_model.named_modules()})  # names only: no shapes
    imported = _import(backend, cardless, store)
    card = imported.card
    assert card.name == "my-adapter-v2" and card.base_fingerprint == backend.base_fingerprint()
    assert (card.rank, card.alpha, card.target_modules) == (4, 64.0, (TARGETS,))
    assert "uploaded without a card" in card.description and card.base_model == "builtin:tiny"
    backend.adapters.load(card.name, imported.folder)
    backend.adapters.load("original", stored.folder)
    try:
        assert _answer(backend, card.name) == _answer(backend, "original")
    finally:
        backend.adapters.unload(card.name)
        backend.adapters.unload("original")


def _tensors(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def _save(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _edit(members: dict[str, bytes], name: str, change) -> dict:
    key = f"shouty/{name}"
    return {**members, key: change(members[key])}


def _config(**values):
    def change(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), **values}).encode()
    return change


def _rename_modules(data: bytes) -> bytes:
    return _save({k.replace("q_proj", "qq_proj"): v for k, v in _tensors(data).items()})


def _wrong_in_features(data: bytes) -> bytes:
    return _save({k: (torch.zeros(v.shape[0], v.shape[1] + 1) if "q_proj.lora_A" in k else v)
                  for k, v in _tensors(data).items()})


def _symlink(members: dict) -> dict:
    info = zipfile.ZipInfo("shouty/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return {**members, info: b"/etc/passwd"}


def _without(members: dict, name: str) -> dict:
    return {k: v for k, v in members.items() if not k.endswith("/" + name)}


# (id, change to the good zip's members, what the message must say)
BAD = [
    ("traversal", lambda m: {**m, "../evil.txt": b"x"}, r"'\.\./evil\.txt' climbs out of the folder with '\.\.'"),
    ("traversal-inside", lambda m: {**m, "shouty/../../evil.txt": b"x"}, "climbs out of the folder"),
    ("absolute", lambda m: {**m, "/etc/cron.d/x": b"x"}, r"'/etc/cron\.d/x' is an absolute path"),
    ("drive-letter", lambda m: {**m, "C:/Windows/x.dll": b"x"}, "starts with a drive letter"),
    ("backslash", lambda m: {**m, "..\\evil.txt": b"x"}, "uses backslashes"),
    ("symlink", _symlink, "'shouty/link' is a symbolic link"),
    ("bin-weights", lambda m: {**_without(m, W), "shouty/adapter_model.bin": b"\x80\x04."},
     r"'shouty/adapter_model\.bin' holds pickled weights, which are refused.*accepted: adapter_model\.safetensors"),
    ("extra-pickle", lambda m: {**m, "shouty/training_args.bin": b"\x80\x04."}, "holds pickled weights"),
    ("missing-config", lambda m: _without(m, C), "no adapter_config.json in it"),
    ("missing-weights", lambda m: _without(m, W), "no adapter_model.safetensors in it"),
    ("bad-json", lambda m: _edit(m, C, lambda d: d[:-5]), "adapter_config.json is not valid JSON"),
    ("not-lora", lambda m: _edit(m, C, _config(peft_type="IA3")), "peft_type 'IA3', not a LoRA adapter"),
    ("wrong-base", lambda m: _edit(m, CARD, _config(base_fingerprint="b" * 64, base_model="hf-hub:org/other")),
     r"trained on hf-hub:org/other \(fingerprint bbbbbbbbbbbb…\), but the loaded base is builtin:tiny "
     r"\(fingerprint [0-9a-f]{12}…\)"),
    ("bad-card", lambda m: _edit(m, CARD, lambda d: b"{"), "adapter_card.json: not valid JSON"),
    ("card-rank", lambda m: _edit(m, CARD, _config(rank=8)),
     "adapter_card.json says rank 8 but adapter_config.json says r=4"),
    ("unknown-target", lambda m: _edit(m, C, _config(target_modules=["qq_proj"])),
     "target module 'qq_proj' does not exist in the loaded base; accepted: .*q_proj"),
    ("unknown-tensor-module", lambda m: _edit(_edit(m, C, _config(target_modules=["q_proj"])), W, _rename_modules),
     r"is for module '.*qq_proj', which does not exist in the loaded base"),
    ("rank-too-large", lambda m: _edit(m, C, _config(r=512)), r"rank r=512, outside 1\.\.256"),
    ("wrong-shape", lambda m: _edit(m, W, _wrong_in_features), r"has shape \[4, 65\], but module .*q_proj' of the "
     r"loaded base has 64 in-features"),
    ("not-safetensors", lambda m: _edit(m, W, lambda d: b"\x80\x04garbage" * 10), "is not safetensors"),
    ("pissa", lambda m: _edit(m, C, _config(init_lora_weights="pissa")), "would rewrite the base model's weights"),
    ("layer-replication", lambda m: _edit(m, C, _config(layer_replication=[[0, 2]])), "sets layer_replication"),
    ("peft-refuses", lambda m: _edit(m, C, _config(layers_pattern="layers")), "peft cannot read adapter_config.json"),
    ("zip-bomb", lambda m: {**m, "shouty/README.md": bytes(8 * 2**20)},
     r"'shouty/README\.md' expands [\d,]+x .* over the limit of 100x \(a zip bomb\?\)"),
    ("two-folders", lambda m: {f"{'a' if k.endswith(W) else 'b'}/{k.split('/')[-1]}": v for k, v in m.items()},
     r"spread over several folders \(a, b\)"),
    ("nested", lambda m: {f"x/{k}": v for k, v in m.items()}, "nested too deep"),
    ("unexpected-file", lambda m: {**m, "shouty/run.sh": b"rm -rf /"}, "unexpected file 'shouty/run.sh'"),
]


@pytest.fixture
def store(tmp_path, backend, source):
    """A store that already holds one adapter: a refused zip must leave exactly that."""
    store = AdapterStore(tmp_path / "store")
    _import(backend, source[1], store, name="kept")
    return store


def _assert_unchanged(store: AdapterStore) -> None:
    assert sorted(p.name for p in store.root.iterdir()) == ["kept"]  # no staging leftovers either
    assert [a.name for a in store.scan()[0]] == ["kept"]


@pytest.mark.parametrize("change, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_zip_is_refused_by_name_and_leaves_the_store_unchanged(tmp_path, backend, source, store, change,
                                                                        message):
    bad = _zip(tmp_path / "bad.zip", change(_members(source[1])))
    with pytest.raises(UserFacingError, match=message) as refused:
        _import(backend, bad, store)
    assert str(refused.value).startswith("bad.zip: ") and "; accepted: " in str(refused.value)
    _assert_unchanged(store)


def test_limits_files_that_are_not_zips_and_names_are_refused(tmp_path, backend, source, store, cat_image):
    zip_path = source[1]
    for limits, message in [
        (ZipLimits(max_rank=2), r"rank r=4, outside 1\.\.2"),
        (ZipLimits(max_members=3), "it has 4 members, over the limit of 3"),
        (ZipLimits(max_total_bytes=10_000), "over 9.8 KB uncompressed"),
        (ZipLimits(max_zip_bytes=1000), r"the zip is [\d.]+ KB, over the limit of 1000 bytes"),
        (ZipLimits(max_weights_bytes=1000), "adapter_model.safetensors is .* over the limit of 1000 bytes"),
    ]:
        with pytest.raises(UserFacingError, match=message):
            _import(backend, zip_path, store, limits)
    png = tmp_path / "photo.zip"
    cat_image.save(png, format="PNG")
    with pytest.raises(UserFacingError,
                       match=r"photo\.zip: not a zip archive \(it looks like PNG\); accepted: a \.zip"):
        _import(backend, png, store)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(zip_path.read_bytes()[:-200])
    with pytest.raises(UserFacingError, match="truncated.zip: not a zip archive"):
        _import(backend, truncated, store)
    with pytest.raises(UserFacingError, match="the name '../up' is not valid"):
        _import(backend, zip_path, store, name="../up")
    with pytest.raises(UserFacingError, match="an adapter named 'kept' already exists"):
        _import(backend, zip_path, store, name="kept")
    with pytest.raises(UserFacingError, match="not a regular file"):
        _import(backend, tmp_path, store)
    _assert_unchanged(store)


def test_module_shapes_sees_linear_layers_under_lora_too(backend, source):
    name = "model.language_model.layers.0.self_attn.v_proj"
    backend.adapters.load("original", source[0].folder)  # v_proj is now a peft LoRA layer
    try:
        shapes = module_shapes(backend.adapters.base_model)
        assert type(backend.adapters.base_model.get_submodule(name)).__module__.startswith("peft.")
    finally:
        backend.adapters.unload("original")
    assert shapes[name] == (64, 32) and shapes["model.language_model.embed_tokens"][1] == 64
    assert shapes["model.language_model"] is None
    with pytest.raises(ValueError, match="ZipLimits.max_rank is 0"):
        ZipLimits(max_rank=0)
