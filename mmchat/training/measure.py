"""Measure the engine's loop against transformers' `Trainer` on the same work.

`python -m mmchat.training.measure [--preset offline|tiny] [--steps N]` trains the same LoRA
(same data, collator, answer-only loss, seed, optimizer settings) once with the engine's
`run_loop` and once with `run_trainer` below (transformers' `Trainer` plus a
`TrainerCallback` for progress and stop: what the engine used before it needed resumable
checkpoints), and prints set-up time (model wrapping, Trainer construction), median time
per step, total time and the final loss of each. It is a measurement, not part of
training; it publishes nothing.
"""

from __future__ import annotations

import argparse
import statistics
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


def run_trainer(model: Any, encoded: list[Any], config: Any, pad_id: int, on_step: Any) -> list[float]:
    """The alternative to the engine's loop: transformers' `Trainer` with the answer-only loss."""
    import tempfile

    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from mmchat.training.collate import collate
    from mmchat.training.engine import answer_loss

    losses: list[float] = []

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                on_step()

    class AnswerOnly(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return answer_loss(model, inputs)

    with tempfile.TemporaryDirectory(prefix=".mmchat-trainer-") as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=config.batch_size, num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1, learning_rate=config.learning_rate, weight_decay=0.0,
            lr_scheduler_type="linear", warmup_steps=config.warmup_steps, max_grad_norm=1.0,
            seed=config.seed, data_seed=config.seed, save_strategy="no", report_to=[], logging_steps=1,
            disable_tqdm=True, use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0,
        )
        trainer = AnswerOnly(model=model, args=args, train_dataset=list(encoded),
                             data_collator=lambda batch: collate(batch, pad_id), callbacks=[Report()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return losses


def _run(preset: Any, cache_dir: Path, config: Any, n: int, use_trainer: bool) -> dict[str, float]:
    from mmchat.backends.registry import load_base_copy
    from mmchat.training.engine import prepare_model, run_loop

    model, tokenizer = load_base_copy(preset, cache_dir)
    encoded = _data(preset, tokenizer, n)
    pad_id = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id
    stamps: list[float] = []
    started = time.perf_counter()
    peft_model = prepare_model(model, preset.kind, config)
    if use_trainer:
        losses = run_trainer(peft_model, encoded, config, pad_id, lambda: stamps.append(time.perf_counter()))
    else:
        losses = run_loop(peft_model, encoded, config, pad_id, lambda s, t, loss: stamps.append(time.perf_counter()))
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
