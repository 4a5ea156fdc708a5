"""Adapter zips: export a stored adapter as a zip, and import an uploaded zip into the store
only after every check passed.

`import_adapter_zip` reads the zip without extracting anything first and refuses it, with a
message naming the problem and what is accepted, when:

* the file is not a readable zip (it says what the file looks like instead), is too large, or
  has too many members;
* a member name is unsafe: `..`, an absolute path, a drive letter, a backslash, a NUL byte, a
  symlink, or an encrypted member;
* it is not one peft folder (at the top level or inside one subfolder), or holds a file other
  than `adapter_config.json`, `adapter_model.safetensors`, `adapter_card.json`, `README.md`
  (pickled weights — `.bin`, `.pt`, … — are refused by name: loading them runs code);
* a member's uncompressed size, the total, or a member's compression ratio is over
  `ZipLimits` (zip bombs; actual bytes are counted again while extracting);
* `adapter_config.json` does not parse, is not LoRA, has a rank over the limit, targets
  modules the loaded base does not have, or asks for an option that would change the base's
  own weights or import code when loaded (PiSSA/OLoRA/… initialisation, layer replication,
  Megatron, parameter targets, trainable tokens);
* the safetensors header does not parse, a dtype is not F32/F16/BF16, the byte ranges do not
  tile the file, a tensor name is not peft's, a tensor belongs to a module the base does not
  have, or a LoRA matrix's shape does not fit that module (rank, in/out features);
* `adapter_card.json` is invalid, or its base fingerprint is not the loaded base's (the
  message names both bases), or its rank differs from the config's;
* a visual adapter's parts do not fit: `projector.safetensors` and `soft_prompt.safetensors`
  come only with a card naming them under those names (and the card's entries only with the
  files), and once extracted they are checked by the very function the host loads them with
  (`mmchat.adapters.host.read_visual_parts`): a projector for another feature size or hidden
  size, soft prompts of another width or length, an unreadable file — each refused naming the
  file and what the loaded base accepts.

A zip without a card is accepted only when every LoRA tensor's shape was checked against the
loaded base's modules (pass `module_shapes(model)`, not bare names): a card is then written
for it, named from the `name` argument or the zip's file name, with the loaded base's
fingerprint (the shapes fit, nothing more is known: its description says so).

Only then is the adapter published through `AdapterStore.publish` (a staged folder, card
last), so a refused or failed import leaves nothing in the store. Files are written under
their own fixed names, never under a name taken from the zip.

`export_adapter_zip` writes a stored adapter's files as `<name>/<file>` into a zip
(deterministic: fixed timestamps and order), the projector and soft prompt its card names
included, through a temporary file renamed into place.

It imports no torch at import time (peft is imported to parse the extracted config, torch to
read a visual adapter's parts). It does
not load adapters onto a model (`mmchat.adapters.host`) or decide which base is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Collection, Mapping

from mmchat.adapters.card import CARD_FILE, NAME, AdapterCard, CardError, name_problem
from mmchat.adapters.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore, StoredAdapter
from mmchat.errors import InvalidUpload
from mmchat.files import SAFE_NAMES, human_bytes, sniff, zip_file_members

__all__ = ["ZipLimits", "export_adapter_zip", "import_adapter_zip", "module_shapes", "ACCEPTED"]

README_FILE = "README.md"
# mmchat.vision.projector.PROJECTOR_FILE and mmchat.vision.soft_prompt.SOFT_PROMPT_FILE (those
# modules import torch; a test keeps the names equal).
PROJECTOR_FILE = "projector.safetensors"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
VISUAL_FILES = (PROJECTOR_FILE, SOFT_PROMPT_FILE)
ALLOWED_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, README_FILE, *VISUAL_FILES)
ACCEPTED = (
    "a .zip of one peft LoRA folder (at the top level or in one subfolder) holding "
    f"{CONFIG_FILE} and {WEIGHTS_FILE}, optionally {CARD_FILE} and {README_FILE} "
    f"(and, for a visual adapter whose card names them, {PROJECTOR_FILE} and {SOFT_PROMPT_FILE})"
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<param>weight|bias))?"
)
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
# init_lora_weights values that only set the LoRA matrices; the others (pissa, olora, corda,
# loftq, eva, orthogonal, ...) rewrite or need the base's own weights when the adapter is loaded.
_SAFE_INITS = (True, False, "gaussian")
# Config options that change the base model's structure or weights, or import modules, on load.
_REFUSED_OPTIONS = {
    "layer_replication": "it duplicates the base model's layers",
    "megatron_config": "it imports Megatron modules",
    "target_parameters": "it targets parameters instead of modules",
    "trainable_token_indices": "it changes the base model's token embeddings",
}
_MAX_REGEX = 512
_CHUNK = 1 << 20

ModuleShapes = Mapping[str, "tuple[int, int] | None"]


@dataclass(frozen=True)
class ZipLimits:
    """Limits on an uploaded adapter zip (the config's `[adapters]` section may set them)."""

    max_zip_bytes: int = 256 * 2**20  # the zip file itself
    max_members: int = 16
    max_total_bytes: int = 512 * 2**20  # all members, uncompressed
    max_weights_bytes: int = 512 * 2**20  # adapter_model.safetensors, uncompressed
    max_text_bytes: int = 1 * 2**20  # adapter_config.json, adapter_card.json, README.md each
    max_ratio: float = 100.0  # uncompressed / compressed, for members larger than ratio_floor_bytes
    ratio_floor_bytes: int = 1 * 2**20
    max_header_bytes: int = 16 * 2**20  # the safetensors JSON header
    max_rank: int = 256  # LoRA r (the card accepts 1..256)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"ZipLimits.{f.name} is {value!r}; expected a positive number")


def module_shapes(model: Any) -> dict[str, tuple[int, int] | None]:
    """Every module name of `model`, with `(in_features, out_features)` for linear layers
    (LoRA-wrapped and 4-bit ones too) and `(num_embeddings, embedding_dim)` for embeddings;
    `None` for other modules. Pass the serving base (`backend.adapters.base_model`)."""
    shapes: dict[str, tuple[int, int] | None] = {}
    for name, module in model.named_modules():
        pair = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if not all(isinstance(v, int) for v in pair):
            pair = (getattr(module, "num_embeddings", None), getattr(module, "embedding_dim", None))
        shapes[name] = pair if all(isinstance(v, int) for v in pair) else None  # type: ignore[assignment]
    return shapes


# ------------------------------------------------------------------------------ export


def export_adapter_zip(stored: StoredAdapter, out_path: str | Path) -> Path:
    """Write `stored`'s files as `<name>/<file>` into the zip `out_path` (replaced if present)."""
    out_path = Path(out_path)
    visual = [entry["file"] for entry in (stored.card.projector, stored.card.soft_prompt) if entry]
    names = dict.fromkeys([*ALLOWED_FILES, *visual])
    files = [stored.folder / f for f in names if (stored.folder / f).is_file()]
    for required in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, *visual):
        if not (stored.folder / required).is_file():
            raise InvalidUpload(f"adapter {stored.name!r} has no {required}; it cannot be exported")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".zip.part", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                info = zipfile.ZipInfo(f"{stored.name}/{path.name}", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out_path


# ------------------------------------------------------------------------------ import


def import_adapter_zip(
    zip_path: str | Path,
    store: AdapterStore,
    fingerprint: str,
    module_names: ModuleShapes | Collection[str],
    limits: ZipLimits = ZipLimits(),
    *,
    name: str | None = None,
    base_model: str = "",
    display: str | None = None,
) -> StoredAdapter:
    """Check the uploaded zip against the loaded base and publish it into `store`.

    `fingerprint`: the loaded base's (`backend.base_fingerprint()`); `module_names`: its
    module names, best as `module_shapes(model)` so LoRA shapes are checked too (required for
    a zip without a card); `name`: the adapter's name (default: the card's, else the zip's
    name, sanitized); `base_model`: the loaded base's source, for messages and written cards;
    `display`: the file name the user knows. Raises `InvalidUpload` naming the problem and what
    is accepted; on any failure the store is left as it was.
    """
    path = Path(zip_path)
    display = display or path.name
    problem = _Problems(display)
    zf = _open_zip(path, display, limits)
    with zf:
        members = _check_members(zf, problem, limits)
        config_bytes = _read_member(zf, members[CONFIG_FILE], limits.max_text_bytes, problem)
        config = _check_config(config_bytes, problem, limits)
        header, header_bytes = _read_header(zf, members[WEIGHTS_FILE], problem, limits)
        shapes = module_names if isinstance(module_names, Mapping) else dict.fromkeys(module_names)
        _check_targets(config, shapes, problem)
        all_checked = _check_tensors(header, shapes, config, problem, limits)
        card = _card(zf, members, config, fingerprint, base_model, all_checked, name, display, problem, limits)
        visual = _visual_members(card, members, problem)
        hidden_size = _hidden_size(shapes, problem) if visual else 0
        readme = (
            _read_member(zf, members[README_FILE], limits.max_text_bytes, problem) if README_FILE in members else None
        )

        def write(folder: Path) -> None:
            (folder / CONFIG_FILE).write_bytes(config_bytes)
            _extract_weights(zf, members[WEIGHTS_FILE], folder / WEIGHTS_FILE, header_bytes, problem, limits)
            for file in visual:
                _extract(zf, members[file], folder / file, problem, limits)
            if readme is not None:
                (folder / README_FILE).write_bytes(readme)
            _check_peft_parses(folder, problem)
            if visual:
                _check_visual_parts(folder, hidden_size, card, problem)

        return store.publish(card, write)


class _Problems:
    """Builds the `InvalidUpload` for one zip: `<display>: <what>; accepted: <what is>`."""

    def __init__(self, display: str) -> None:
        self.display = display

    def __call__(self, what: str, accepted: str = ACCEPTED) -> InvalidUpload:
        return InvalidUpload(f"{self.display}: {what}; accepted: {accepted}")


def _open_zip(path: Path, display: str, limits: ZipLimits) -> zipfile.ZipFile:
    problem = _Problems(display)
    try:
        st = os.stat(path)
    except OSError as err:
        raise problem(f"file cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise problem("not a regular file")
    if st.st_size > limits.max_zip_bytes:
        raise problem(f"the zip is {human_bytes(st.st_size)}, over the limit of {human_bytes(limits.max_zip_bytes)}",
                      f"a zip of at most {human_bytes(limits.max_zip_bytes)}")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        with open(path, "rb") as fh:
            kind = sniff(fh.read(4096))
        looks = f"it looks like {kind[1]}" if kind and kind[1] != "ZIP" else f"it cannot be read as one ({err})"
        raise problem(f"not a zip archive ({looks})") from None


def _check_members(zf: zipfile.ZipFile, problem: _Problems, limits: ZipLimits) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise problem(f"it has {len(infos)} members, over the limit of {limits.max_members}")
    files: dict[str, zipfile.ZipInfo] = {}
    folders: set[tuple[str, ...]] = set()

    def refuse(what: str, accepted: str) -> InvalidUpload:
        return problem(what, f"{ACCEPTED}, with {accepted}" if accepted == SAFE_NAMES else accepted)

    for info, parts in zip_file_members(infos, max_total_bytes=limits.max_total_bytes, max_ratio=limits.max_ratio,
                                        ratio_floor_bytes=limits.ratio_floor_bytes, refuse=refuse):
        base = parts[-1]
        if base.lower().endswith(PICKLE_SUFFIXES):
            raise problem(f"{info.filename!r} holds pickled weights, which are refused (loading them can run code)",
                          f"{WEIGHTS_FILE} (safetensors) only")
        if base not in ALLOWED_FILES:
            raise problem(f"unexpected file {info.filename!r}")
        if base in files:
            raise problem(f"{base} appears twice ({files[base].filename!r} and {info.filename!r})")
        files[base] = info
        folders.add(parts[:-1])
    if len(folders) > 1:
        where = ", ".join(sorted("/".join(f) or "(top level)" for f in folders))
        raise problem(f"its files are spread over several folders ({where})")
    if folders and len(next(iter(folders))) > 1:
        raise problem(f"its files are nested too deep ({'/'.join(next(iter(folders)))}/)")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise problem(f"no {required} in it")
    for weights in (WEIGHTS_FILE, *VISUAL_FILES):
        if weights in files and files[weights].file_size > limits.max_weights_bytes:
            raise problem(f"{weights} is {human_bytes(files[weights].file_size)}, over the limit of "
                          f"{human_bytes(limits.max_weights_bytes)}",
                          f"weights of at most {human_bytes(limits.max_weights_bytes)}")
    return files


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, problem: _Problems) -> bytes:
    base = PurePosixPath(info.filename).name
    if info.file_size > limit:
        raise problem(f"{base} is {human_bytes(info.file_size)}, over the limit of {human_bytes(limit)}")
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise problem(f"{base} cannot be read from the zip ({err})") from None
    if len(data) > limit:
        raise problem(f"{base} is over the limit of {human_bytes(limit)}")
    return data


def _check_config(data: bytes, problem: _Problems, limits: ZipLimits) -> dict[str, Any]:
    lora = f"{CONFIG_FILE} of a peft LoRA adapter (peft_type LORA, r 1..{limits.max_rank})"
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise problem(f"{CONFIG_FILE} is not valid JSON ({err})", lora) from None
    if not isinstance(config, dict):
        raise problem(f"{CONFIG_FILE} is not a JSON object", lora)
    if config.get("peft_type") != "LORA":
        raise problem(f"{CONFIG_FILE} has peft_type {config.get('peft_type')!r}, not a LoRA adapter", lora)
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= limits.max_rank:
        raise problem(f"{CONFIG_FILE} has rank r={r!r}, outside 1..{limits.max_rank}", lora)
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limits.max_rank for v in pattern.values()
    ):
        raise problem(f"{CONFIG_FILE} has a rank_pattern outside 1..{limits.max_rank} ({pattern!r})"[:300], lora)
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise problem(f"{CONFIG_FILE} has lora_alpha {alpha!r}, not a number", lora)
    targets = config.get("target_modules")
    if isinstance(targets, str):
        if len(targets) > _MAX_REGEX:
            raise problem(f"{CONFIG_FILE} has a target_modules pattern of {len(targets)} characters",
                          f"a pattern of at most {_MAX_REGEX} characters, or a list of module names")
    elif not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise problem(f"{CONFIG_FILE} has target_modules {targets!r}"[:300],
                      "a list of module names, or one regular expression")
    init = config.get("init_lora_weights", True)
    if init not in _SAFE_INITS or isinstance(init, (int, float)) and not isinstance(init, bool):
        raise problem(f"{CONFIG_FILE} has init_lora_weights {init!r}: loading it would rewrite the base model's "
                      "weights", "init_lora_weights true, false or \"gaussian\" (convert PiSSA/OLoRA/LoftQ "
                      "adapters to plain LoRA with peft's path_initial_model_for_weight_conversion)")
    for key, why in _REFUSED_OPTIONS.items():
        if config.get(key):
            raise problem(f"{CONFIG_FILE} sets {key}: {why}", "plain LoRA adapters on the base's modules")
    return config


def _read_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, problem: _Problems, limits: ZipLimits
) -> tuple[dict[str, Any], bytes]:
    """The safetensors header, checked: dtypes, shapes, and byte ranges that tile the file."""
    accepted = f"{WEIGHTS_FILE} in the safetensors format"
    try:
        with zf.open(info) as fh:
            head = _read_exactly(fh, 8)
            if len(head) < 8:
                raise problem(f"{WEIGHTS_FILE} is too short to be safetensors ({len(head)} bytes)", accepted)
            (length,) = struct.unpack("<Q", head)
            if length > limits.max_header_bytes or length + 8 > info.file_size:
                raise problem(f"{WEIGHTS_FILE} is not safetensors (header length {length} does not fit the file)",
                              accepted)
            raw = _read_exactly(fh, length)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise problem(f"{WEIGHTS_FILE} cannot be read from the zip ({err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise problem(f"{WEIGHTS_FILE} has a header that is not valid JSON ({err})", accepted) from None
    if not isinstance(header, dict):
        raise problem(f"{WEIGHTS_FILE} has a header that is not a JSON object", accepted)
    header.pop("__metadata__", None)
    if not header:
        raise problem(f"{WEIGHTS_FILE} holds no tensors", accepted)
    ranges = []
    for key, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if dtype not in _DTYPE_BYTES:
            raise problem(f"tensor {key!r} in {WEIGHTS_FILE} has dtype {dtype!r}",
                          f"tensors of dtype {', '.join(_DTYPE_BYTES)}")
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
            raise problem(f"tensor {key!r} in {WEIGHTS_FILE} has a malformed shape or byte range", accepted)
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise problem(f"tensor {key!r} in {WEIGHTS_FILE}: its byte range does not match its shape {shape}",
                          accepted)
        ranges.append(offsets)
    position = 0
    for begin, end in sorted(ranges):
        if begin != position:
            raise problem(f"{WEIGHTS_FILE} has overlapping or missing tensor data", accepted)
        position = end
    if position != info.file_size - 8 - length:
        raise problem(f"{WEIGHTS_FILE} is {human_bytes(info.file_size)} but its header describes "
                      f"{human_bytes(position + 8 + length)}", accepted)
    return header, head + raw


def _read_exactly(fh: IO[bytes], n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = fh.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _check_targets(config: dict[str, Any], shapes: Mapping[str, Any], problem: _Problems) -> None:
    targets = config["target_modules"]
    names = [n for n in shapes if n]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, shape in shapes.items() if n and shape is not None})
    accepted = "target modules the loaded base has, e.g. " + ", ".join(leaves[:30])
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise problem(f"{CONFIG_FILE} has target_modules {targets!r}, not a valid regular expression ({err})",
                          accepted) from None
        if not any(pattern.fullmatch(n) for n in names):
            raise problem(f"target_modules {targets!r} matches no module of the loaded base", accepted)
        return
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise problem(f"target module {target!r} does not exist in the loaded base", accepted)
    for key in ("modules_to_save",):
        for target in config.get(key) or []:
            if not isinstance(target, str) or not any(n == target or n.endswith("." + target) for n in names):
                raise problem(f"{key} names {target!r}, which does not exist in the loaded base", accepted)


def _check_tensors(
    header: dict[str, Any], shapes: Mapping[str, Any], config: dict[str, Any], problem: _Problems, limits: ZipLimits
) -> bool:
    """Every tensor belongs to a module of the base and fits its shape; True when every LoRA
    tensor's shape could be checked against the base (its module's in/out features known)."""
    ranks: dict[str, set[int]] = {}
    lora_tensors = 0
    all_checked = True
    for key, entry in header.items():
        shape = entry["shape"]
        if not key.startswith(_PEFT_PREFIX):
            raise problem(f"tensor {key!r} in {WEIGHTS_FILE} is not named the way peft saves LoRA weights",
                          f"tensors named {_PEFT_PREFIX}<module>.lora_A.weight / lora_B.weight")
        rest = key[len(_PEFT_PREFIX):]
        match = _LORA_KEY.fullmatch(rest)
        module = match["module"] if match else rest.rsplit(".", 1)[0]
        if module not in shapes:
            raise problem(f"tensor {key!r} is for module {module!r}, which does not exist in the loaded base",
                          "adapters trained on the loaded base")
        known = shapes[module]
        if match is None:  # modules_to_save: a full copy of a module's parameter
            linear_weight = rest.endswith(".weight") and len(shape) == 2
            if known is not None and linear_weight and tuple(shape) != (known[1], known[0]):
                raise problem(f"tensor {key!r} has shape {shape}; module {module!r} of the loaded base has weight "
                              f"{[known[1], known[0]]}", "adapters trained on the loaded base")
            continue
        kind, param = match["kind"], match["param"] or "weight"
        if kind == "lora_magnitude_vector" or param == "bias":
            continue
        lora_tensors += 1
        if len(shape) != 2:
            raise problem(f"tensor {key!r} has shape {shape}, not a LoRA matrix (2-D)",
                          "LoRA on linear and embedding layers")
        rank, features = (shape[0], shape[1]) if kind.endswith("A") else (shape[1], shape[0])
        if not 1 <= rank <= limits.max_rank:
            raise problem(f"tensor {key!r} has rank {rank}, outside 1..{limits.max_rank}",
                          f"LoRA rank 1..{limits.max_rank}")
        ranks.setdefault(module, set()).add(rank)
        if known is None:
            all_checked = False
            continue
        expected = known[0] if kind.endswith("A") else known[1]
        if features != expected:
            side = "in" if kind.endswith("A") else "out"
            raise problem(f"tensor {key!r} has shape {shape}, but module {module!r} of the loaded base has "
                          f"{expected} {side}-features", "adapters trained on the loaded base")
    if not lora_tensors:
        raise problem(f"{WEIGHTS_FILE} holds no LoRA weights (lora_A / lora_B)")
    for module, seen in ranks.items():
        if len(seen) > 1:
            raise problem(f"module {module!r} has LoRA matrices of different ranks {sorted(seen)}")
    return all_checked


def _sanitize(text: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:48].strip("-_")
    return name or "uploaded-adapter"


def _card(
    zf: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    config: dict[str, Any],
    fingerprint: str,
    base_model: str,
    all_checked: bool,
    name: str | None,
    display: str,
    problem: _Problems,
    limits: ZipLimits,
) -> AdapterCard:
    names = "a name of a-z, 0-9, '-', '_' (at most 48, starting with a letter or digit)"
    if name is not None and (not NAME.fullmatch(name) or name_problem(name)):
        raise problem(f"the name {name!r} is not valid", names + ", not a reserved name such as 'base' or 'items'")
    loaded = f"{base_model or 'the loaded base'} (fingerprint {fingerprint[:12]}…)"
    if CARD_FILE in members:
        data = _read_member(zf, members[CARD_FILE], limits.max_text_bytes, problem)
        try:
            card = AdapterCard.from_json(data.decode("utf-8"))
        except (CardError, UnicodeDecodeError) as err:
            raise problem(f"{CARD_FILE}: {err}", f"an mmchat {CARD_FILE}, or none") from None
        if card.base_fingerprint != fingerprint:
            raise problem(f"the adapter was trained on {card.base_model} "
                          f"(fingerprint {card.base_fingerprint[:12]}…), "
                          f"but the loaded base is {loaded}", "adapters trained on the loaded base")
        if card.rank != config["r"]:
            raise problem(f"{CARD_FILE} says rank {card.rank} but {CONFIG_FILE} says r={config['r']}")
        return dataclasses.replace(card, name=name) if name else card
    if not all_checked:
        raise problem(f"it has no {CARD_FILE}, and its LoRA shapes could not all be checked against the loaded base",
                      f"{ACCEPTED}; a zip without a card only when its shapes fit the loaded base")
    targets = config["target_modules"]
    return AdapterCard(
        name=name or _sanitize(Path(display).stem),
        description=f"uploaded without a card ({display}); its shapes fit the loaded base",
        task="uploaded",
        base_model=base_model or "the base loaded at upload",
        base_fingerprint=fingerprint,
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),
        target_modules=(targets,) if isinstance(targets, str) else tuple(targets),
        dataset={"summary": "unknown (uploaded without a card)"},
    )


def _visual_members(card: AdapterCard, members: dict[str, zipfile.ZipInfo], problem: _Problems) -> list[str]:
    """The visual files to extract: exactly those the card names, under their fixed names."""
    accepted = (f"a visual adapter's {PROJECTOR_FILE} (and {SOFT_PROMPT_FILE}) with an {CARD_FILE} naming them "
                "under those names")
    named = []
    for key, entry, fixed in (("projector", card.projector, PROJECTOR_FILE),
                              ("soft_prompt", card.soft_prompt, SOFT_PROMPT_FILE)):
        if entry:
            if entry["file"] != fixed:
                raise problem(f"{CARD_FILE} names its {key} file {entry['file']!r}", accepted)
            if fixed not in members:
                raise problem(f"{CARD_FILE} names a {key}, {fixed}, which the zip does not hold", accepted)
            named.append(fixed)
        elif fixed in members:
            raise problem(f"{fixed} is in the zip but no {CARD_FILE} in it names it ({key})", accepted)
    return named


def _hidden_size(shapes: Mapping[str, Any], problem: _Problems) -> int:
    """The loaded base's embedding width, from its token embedding's shape in `module_shapes`."""
    widths = {shape[1] for name, shape in shapes.items() if name.endswith("embed_tokens") and shape is not None}
    if len(widths) != 1:
        raise problem("its projector cannot be checked: the loaded base's embedding width is not known",
                      "a visual adapter uploaded with the loaded base's module_shapes")
    return int(widths.pop())


def _check_visual_parts(folder: Path, hidden_size: int, card: AdapterCard, problem: _Problems) -> None:
    """The extracted projector and soft prompt, read and checked as the host will load them."""
    from mmchat.adapters.host import read_visual_parts
    from mmchat.errors import UserFacingError

    try:
        read_visual_parts(folder, hidden_size, card.name, card)  # the card is written after this
    except UserFacingError as err:
        raise problem(str(err), f"a visual adapter whose {PROJECTOR_FILE} maps the features its card names to "
                                f"{hidden_size}-d embeddings and whose {SOFT_PROMPT_FILE} holds vectors of width "
                                f"{hidden_size}") from None


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, problem: _Problems, limits: ZipLimits) -> None:
    """Copy a member out of the zip, counting bytes (never trusting the declared size)."""
    base = PurePosixPath(info.filename).name
    limit = min(info.file_size, limits.max_weights_bytes)
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise problem(f"{base} expands beyond its declared {human_bytes(info.file_size)}")
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        raise problem(f"{base} is damaged in the zip ({err})") from None
    if written != info.file_size:
        raise problem(f"{base} is damaged in the zip ({written} of {info.file_size} bytes)")


def _extract_weights(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, header_bytes: bytes, problem: _Problems,
    limits: ZipLimits,
) -> None:
    """Copy the weights out of the zip, then check the header read before is the one written."""
    _extract(zf, info, target, problem, limits)
    with open(target, "rb") as fh:
        if fh.read(len(header_bytes)) != header_bytes:
            raise problem(f"{WEIGHTS_FILE} changed while it was read")


def _check_peft_parses(folder: Path, problem: _Problems) -> None:
    """peft's own reading of the config (what `PeftModel.from_pretrained` will do first)."""
    from peft import PeftConfig

    try:
        PeftConfig.from_pretrained(str(folder))
    except Exception as err:  # peft raises ValueError/TypeError/KeyError for configs it cannot take
        raise problem(f"peft cannot read {CONFIG_FILE} ({err.__class__.__name__}: {str(err)[:200]})") from None
