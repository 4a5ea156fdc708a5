"""The training engine: a LoRA adapter trained on a copy of the base, published into the store.

`train_adapter(config, examples, store, preset=..., cache_dir=...)`:

1. loads a fresh copy of the preset's base with `load_base_copy` (never the serving model:
   peft injects its layers into the model it wraps, and training mode would disturb chat),
   and computes the base's fingerprint with `AdapterHost.fingerprint`, as the backend does;
2. renders every example as chat would (`mmchat.training.examples.Renderer`: answer-only
   labels, prompt tokens -100) and refuses an example longer than `max_length` up front;
3. on a 4-bit base on CUDA (QLoRA) calls peft's `prepare_model_for_kbit_training` first
   (this path cannot run on the CPU-only machines the tests use; a 4-bit base without CUDA is
   refused);
4. trains with transformers' `Trainer` (`run_trainer`): seeded LoRA init and data order,
   AdamW, warm-up then linear decay, gradient clipping, and a loss over answer tokens only
   that projects to the vocabulary only at answer positions (`answer_loss`, through
   `logits_to_keep`); a `TrainerCallback` calls `progress(step, total, loss)` after every
   step and ends training when `stop` (a `threading.Event`) is set: `TrainingStopped`,
   nothing published;
5. saves the adapter into a temporary folder, lets `evaluate(folder)` score it (metrics and
   held-out examples for the card), then publishes through `AdapterStore.publish` (a staged
   folder, the card written last, renamed into place), and returns the `StoredAdapter`.
   A run that fails or is stopped at any point leaves no listed adapter.

Trainer or a plain loop? Measured with `python -m mmchat.training.measure` (same data,
collator, loss, seed and schedule; 2 shared CPU cores, OMP_WAIT_POLICY=PASSIVE): tiny model,
10 steps of 8: loop 0.041 s/step, Trainer 0.042-0.047 s/step, the same final loss (10.685
both); offline SmolLM2-135M, 8 steps of 8: 2.4-4.2 s/step for both, final loss 0.93509 both
(step times varied with the other processes, not with the method). Trainer's own costs are
~0.3 s to set up and its import (~4 s once per process). The loop was not measurably
better, so the engine uses Trainer, as the issue prefers: callbacks for progress and stop,
and mixed precision, device placement and gradient checkpointing for the GPU (QLoRA) path
come with it. `measure.plain_loop` keeps the alternative for re-measuring.

Same seed, same data and same machine -> identical weights (tested). What it does not do:
choose datasets, evaluate by itself, or serve the adapter (that is `mmchat.adapters.host`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from mmchat.adapters.card import AdapterCard
from mmchat.adapters.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore, StoredAdapter
from mmchat.config import GenerationDefaults, ModelPreset
from mmchat.errors import UserFacingError
from mmchat.training.config import TrainingConfig
from mmchat.training.examples import Encoded, Example, Renderer, dataset_digest

Progress = Callable[[int, int, float], None]
Evaluate = Callable[[Path], tuple[dict[str, Any], list[dict[str, str]]]]


class TrainingStopped(UserFacingError):
    """The stop event was set; nothing was published."""


def _targets(config: TrainingConfig, kind: str, model: Any) -> dict[str, Any]:
    """LoraConfig keyword arguments for the targets (LLaVA kinds: the language model only)."""
    names = list(config.target_modules)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        suggestions = sorted(n for n in present if n.endswith("_proj"))[:12]
        raise UserFacingError(f"target_modules {missing} are not modules of this base; accepted: {suggestions}")
    layers = _decoder_layer_count(model)
    if config.layers_from >= layers:
        raise UserFacingError(f"layers_from {config.layers_from} is out of range; this base has {layers} decoder "
                              f"layers: use 0..{layers - 1}")
    chosen = range(config.layers_from, layers)
    if kind == "offline":
        extra = {"layers_to_transform": list(chosen)} if config.layers_from else {}
        return {"target_modules": names, **extra}
    # LLaVA: the vision tower has q_proj/k_proj/v_proj too; adapt the language model only.
    layer_part = r"\d+" if not config.layers_from else "(?:" + "|".join(str(i) for i in chosen) + ")"
    return {"target_modules": rf".*language_model.*\.layers\.{layer_part}\..*\.({'|'.join(names)})"}


def _decoder_layer_count(model: Any) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    return int(config.num_hidden_layers)


def _is_4bit(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def _batches(count: int, batch_size: int, epochs: int, max_steps: int, seed: int) -> list[list[int]]:
    """Example indices per step: a seeded shuffle per epoch, cut to `max_steps` (0: all epochs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    steps: list[list[int]] = []
    epoch = 0
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        steps.extend(order[i: i + batch_size] for i in range(0, count, batch_size))
        epoch += 1
        if (max_steps and len(steps) >= max_steps) or (not max_steps and epoch >= epochs):
            break
    return steps[:max_steps] if max_steps else steps


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over answer tokens, projecting to the vocabulary only where needed."""
    import torch.nn.functional as F

    from mmchat.training.collate import answer_positions

    labels = batch["labels"]
    keep = answer_positions(labels)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep.to(labels.device))
    targets = labels[:, keep + 1]
    return F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def run_trainer(
    model: Any,
    encoded: Sequence[Encoded],
    config: TrainingConfig,
    pad_id: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> list[float]:
    """Train `model` (a PeftModel) in place with transformers' `Trainer`; the loss of every step.

    A `TrainerCallback` reports each step's loss to `progress` and asks the Trainer to stop
    when `stop` is set (then `TrainingStopped` is raised: the caller publishes nothing).
    """
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from mmchat.training.collate import collate

    steps = len(_batches(len(encoded), config.batch_size, config.epochs, config.max_steps, config.seed))
    losses: list[float] = []

    class Report(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if stop is not None and stop.is_set():
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                loss = float(logs["loss"])
                if not math.isfinite(loss):
                    raise UserFacingError(f"the loss became {loss} at step {state.global_step}; lower "
                                          f"learning_rate ({config.learning_rate}) and try again")
                losses.append(loss)
                if progress is not None:
                    progress(state.global_step, steps, loss)
            if stop is not None and stop.is_set():
                control.should_training_stop = True

    class AnswerOnly(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return answer_loss(model, inputs)

    cuda = next(model.parameters()).device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix=".mmchat-trainer-") as out:  # Trainer wants one; nothing is saved
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=config.batch_size, num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1, learning_rate=config.learning_rate, weight_decay=0.0,
            lr_scheduler_type="linear", warmup_steps=config.warmup_steps, max_grad_norm=1.0,
            seed=config.seed, data_seed=config.seed, save_strategy="no", report_to=[], logging_steps=1,
            disable_tqdm=True, use_cpu=not cuda, bf16=cuda and _is_4bit(model) and torch.cuda.is_bf16_supported(),
            remove_unused_columns=False, dataloader_num_workers=0,
        )
        trainer = AnswerOnly(model=model, args=args, train_dataset=list(encoded),
                             data_collator=lambda batch: collate(batch, pad_id), callbacks=[Report()])
        trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not stdout
        if stop is not None and stop.is_set():
            raise TrainingStopped(f"training stopped before step 1 of {steps}; nothing was saved")
        trainer.train()
    model.eval()
    if stop is not None and stop.is_set():
        raise TrainingStopped(f"training stopped at step {len(losses)} of {steps}; nothing was saved")
    return losses


def prepare_model(model: Any, kind: str, config: TrainingConfig) -> Any:
    """A PeftModel with fresh LoRA weights (seeded) on `model`; QLoRA preparation on a 4-bit base."""
    import torch
    from peft import LoraConfig, get_peft_model

    if _is_4bit(model):
        if not torch.cuda.is_available():
            raise UserFacingError("a 4-bit base trains on CUDA only (QLoRA); use a float preset on this machine")
        from peft import prepare_model_for_kbit_training

        # Not run by the CPU tests: casts norms to fp32, enables input grads and checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                      task_type="CAUSAL_LM", **_targets(config, kind, model))
    with torch.random.fork_rng(devices=[]):  # seeded LoRA init without resetting the caller's RNG
        torch.manual_seed(config.seed)
        return get_peft_model(model, lora)


def train_adapter(
    config: TrainingConfig,
    examples: Sequence[Example],
    store: AdapterStore,
    *,
    preset: ModelPreset,
    cache_dir: Path,
    system_prompt: str | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    evaluate: Evaluate | None = None,
    dataset: dict[str, Any] | None = None,
) -> StoredAdapter:
    """Train a LoRA adapter on a fresh copy of `preset`'s base and publish it into `store`.

    `system_prompt`: the one chat sends (default: the configured default); `evaluate(folder)`
    returns `(metrics, held-out examples)` for the card; `dataset`: extra summary fields for
    the card (e.g. its source). Raises `TrainingStopped` when `stop` is set, `UserFacingError`
    for bad settings or data; in every such case nothing is published.
    """
    import torch

    from mmchat.adapters.host import AdapterHost
    from mmchat.backends.registry import load_base_copy

    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, not {type(config).__name__}")
    if not examples:
        raise UserFacingError("no training examples; accepted: at least one {question, answer}")
    if (store.root / config.name).exists():
        raise UserFacingError(f"an adapter named {config.name!r} already exists; delete it or choose another name")
    started = time.perf_counter()
    system_prompt = GenerationDefaults().system_prompt if system_prompt is None else system_prompt
    model, tokenizer = load_base_copy(preset, cache_dir)  # never the serving model
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    fingerprint = AdapterHost(model).fingerprint(text_tokenizer.get_vocab())
    renderer = Renderer(preset.kind, tokenizer, system_prompt, config.max_length)
    encoded = [renderer.encode(example) for example in examples]
    pad_id = text_tokenizer.pad_token_id if text_tokenizer.pad_token_id is not None else renderer.eos_id
    peft_model = prepare_model(model, preset.kind, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA dropout, if any
        losses = run_trainer(peft_model, encoded, config, pad_id, progress, stop)
    trained_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix=".mmchat-train-") as tmp:
        folder = Path(tmp) / config.name
        peft_model.save_pretrained(str(folder), safe_serialization=True)
        metrics: dict[str, Any] = {}
        held_out: list[dict[str, str]] = []
        if evaluate is not None:
            metrics, held_out = evaluate(folder)
        if stop is not None and stop.is_set():
            raise TrainingStopped("training stopped before the adapter was saved; nothing was saved")
        metrics = {**metrics, "training": {
            "steps": len(losses), "first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4),
            "seconds": round(trained_s, 1), "hyperparameters": config.to_dict(),
        }}
        kinds: dict[str, int] = {}
        for example in examples:
            kinds[example.kind or "custom"] = kinds.get(example.kind or "custom", 0) + 1
        card = AdapterCard(
            name=config.name,
            description=config.description,
            task=config.task,
            base_model=preset.source,
            base_fingerprint=fingerprint,
            rank=config.rank,
            alpha=float(config.alpha),
            target_modules=tuple(_as_list(peft_model.peft_config["default"].target_modules)),
            chat_template=text_tokenizer.chat_template or "",
            dataset={"examples": len(examples), "kinds": kinds, "sha256": dataset_digest(examples),
                     "system_prompt": system_prompt, **(dataset or {})},
            metrics=metrics,
            examples=held_out,
        )

        def write_weights(staging: Path) -> None:
            # peft's two files (its README.md template is left out: the card says what it is)
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(folder / name, staging / name)

        return store.publish(card, write_weights)


def _as_list(targets: Any) -> list[str]:
    if isinstance(targets, str):
        return [targets]
    return sorted(targets)


__all__ = ["TrainingStopped", "answer_loss", "prepare_model", "run_trainer", "train_adapter"]
