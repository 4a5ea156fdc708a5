"""Training checkpoints in safetensors and JSON: enough to continue a run to the very same weights.

A checkpoint is a folder `step-N` under a run's `checkpoints/` holding

- `trainable.safetensors`: every trainable parameter (the LoRA weights) by name;
- `optimizer.safetensors`: AdamW's per-parameter state (`step`, `exp_avg`, `exp_avg_sq`);
- `rng.safetensors`: torch's CPU generator state (LoRA dropout draws from it);
- `state.json`: the step reached (the data position: batches are a seeded plan, so the step
  says which come next), the losses so far, AdamW's parameter groups and the scheduler's
  state.

No pickle anywhere: transformers' `Trainer` checkpoints hold a pickled optimizer, which this
project does not load. A checkpoint is written under a temporary name and renamed into place,
so a run killed while saving keeps the previous one; older checkpoints are then removed. A
write that fails (a full disk, a read-only folder) raises `UserFacingError` naming the folder
and the reason. It does not decide when to save (that is `mmchat.training.engine`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mmchat.errors import UserFacingError

PREFIX = "step-"
STATE_FILE = "state.json"


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix(PREFIX))
    except ValueError:
        return -1


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (None when there is none)."""
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()
            and _step_of(p) >= 0]
    return max(done, key=_step_of, default=None)


def save_checkpoint(root: Path, step: int, model: Any, optimizer: Any, scheduler: Any, losses: list[float],
                    rng_state: Any = None) -> Path:
    """Write checkpoint `step-<step>` under `root` and remove the older ones; returns its folder.

    `rng_state`: the generator state to keep (default: the current one) — a step cut short has
    drawn from it already, so the caller passes the state from before that step."""
    import torch
    from safetensors.torch import save_file

    target = root / f"{PREFIX}{step}"
    partial = root / f".{PREFIX}{step}.partial-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        trainable = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(partial / "trainable.safetensors"))
        state = optimizer.state_dict()
        tensors = {f"{index}.{key}": value.detach().cpu().contiguous()
                   for index, entry in state["state"].items() for key, value in entry.items()
                   if isinstance(value, torch.Tensor)}
        save_file(tensors, str(partial / "optimizer.safetensors"))
        save_file({"cpu": torch.get_rng_state() if rng_state is None else rng_state}, str(partial / "rng.safetensors"))
        meta = {"step": step, "losses": losses, "param_groups": state["param_groups"],
                "scheduler": _jsonable(scheduler.state_dict())}
        (partial / STATE_FILE).write_text(json.dumps(meta), encoding="utf-8")  # last: marks it complete
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserFacingError(f"could not write the checkpoint at step {step} into {root}: "
                              f"{err.strerror or err}") from None
    for old in root.iterdir():
        if old != target and old.name.startswith(PREFIX) and _step_of(old) < step:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Put a checkpoint's weights, optimizer, scheduler and RNG state back; returns its state.json."""
    import torch
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise UserFacingError(f"checkpoint {folder} does not fit this model (e.g. {missing[0]}); start a new run")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["cpu"])
    return meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return None  # the scheduler's lr lambdas: rebuilt from the config, not stored


__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]
