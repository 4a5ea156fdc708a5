"""Measure the engine's plain loop against transformers' `Trainer` on the same work.

`python -m mmchat.training.measure [--preset offline|tiny] [--steps N]` trains the same LoRA
(same data, collator, answer-only loss, seed, optimizer settings) once with
the plain PyTorch loop below and once with the engine's `run_trainer` (transformers'
`Trainer` plus a `TrainerCallback` for progress and stop), and prints set-up time (model
wrapping, Trainer construction), median time per step, total time and the final loss of
each. It is a measurement, not part of training; it publishes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def _data(preset: Any, tokenizer: Any, n: int) -> list[Any]:
    from mmchat.config import GenerationDefaults
    from mmchat.training.builtin_data import generate
    from mmchat.training.examples import Renderer

    renderer = Renderer(preset.kind, tokenizer, GenerationDefaults().system_prompt)
    photos = preset.kind == "offline"
    examples = [e for e in generate("one-word", n * 2, seed=0) if photos or not e.image_labels][:n]
    return [renderer.encode(e) for e in examples]


def plain_loop(model: Any, encoded: list[Any], config: Any, pad_id: int, on_step: Any) -> list[float]:
    """The alternative to `Trainer`: AdamW, warm-up + linear decay, clipping, a seeded shuffle."""
    import torch

    from mmchat.training.collate import collate
    from mmchat.training.engine import _batches, answer_loss

    steps = _batches(len(encoded), config.batch_size, config.epochs, config.max_steps, config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (len(steps) - step) / len(steps)))
    losses = []
    model.train()
    for indices in steps:
        loss = answer_loss(model, collate([encoded[i] for i in indices], pad_id))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        on_step()
    return losses


def _run(preset: Any, cache_dir: Path, config: Any, n: int, use_trainer: bool) -> dict[str, float]:
    from mmchat.backends.registry import load_base_copy
    from mmchat.training.engine import prepare_model, run_trainer

    model, tokenizer = load_base_copy(preset, cache_dir)
    encoded = _data(preset, tokenizer, n)
    pad_id = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id
    stamps: list[float] = []
    started = time.perf_counter()
    peft_model = prepare_model(model, preset.kind, config)
    if use_trainer:
        losses = run_trainer(peft_model, encoded, config, pad_id, lambda s, t, loss: stamps.append(time.perf_counter()),
                             threading.Event())
    else:
        losses = plain_loop(peft_model, encoded, config, pad_id, lambda: stamps.append(time.perf_counter()))
    step = _median_step(stamps)
    return {"setup_s": stamps[0] - started - step, "step_s": step, "total_s": stamps[-1] - started,
            "final_loss": losses[-1]}


def with_loop(preset: Any, cache_dir: Path, config: Any, n: int) -> dict[str, float]:
    return _run(preset, cache_dir, config, n, use_trainer=False)


def with_trainer(preset: Any, cache_dir: Path, config: Any, n: int) -> dict[str, float]:
    return _run(preset, cache_dir, config, n, use_trainer=True)


def _median_step(stamps: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:])) if len(stamps) > 1 else float("nan")


def main(argv: list[str] | None = None) -> None:
    from mmchat.config import PRESETS
    from mmchat.training.config import TrainingConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "offline"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cache-dir", default="~/.cache/mmchat")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    config = TrainingConfig(name="measure", description="measurement", max_steps=args.steps, batch_size=8)
    cache_dir = Path(args.cache_dir).expanduser()
    n = args.steps * config.batch_size
    for name, run in (("loop", with_loop), ("trainer", with_trainer), ("loop", with_loop), ("trainer", with_trainer)):
        figures = run(preset, cache_dir, config, n)
        print(f"{args.preset} {name:8s} " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
