"""The training engine: a LoRA adapter trained on a copy of the base, published into the store.

`train_adapter(config, examples, store, preset=..., cache_dir=...)`:

1. loads a fresh copy of the preset's base with `load_base_copy` (never the serving model:
   peft injects its layers into the model it wraps, and training mode would disturb chat),
   and computes the base's fingerprint with `AdapterHost.fingerprint`, as the backend does;
2. renders every example as chat would (`mmchat.training.examples.Renderer`: answer-only
   labels, prompt tokens -100; on LLaVA kinds `mmchat.training.pixels.PixelRenderer`, so
   examples with pictures carry their pixels) and refuses an example longer than `max_length`
   up front;
3. on a 4-bit base on CUDA (QLoRA) calls peft's `prepare_model_for_kbit_training` first
   (this path cannot run on the CPU-only machines the tests use; a 4-bit base without CUDA is
   refused);
4. trains with its own loop (`run_loop`): seeded LoRA init and data order (`step_plan`),
   AdamW, warm-up then linear decay, gradient clipping, gradient accumulation, and a loss
   over answer tokens only that projects to the vocabulary only at answer positions
   (`answer_loss`, through `logits_to_keep`); it reports every step (`progress`, and
   `on_event` with loss, learning rate, tokens/s and memory), the held-out loss and sample
   answers every N steps, checkpoints every N steps (`mmchat.training.checkpoint`) and
   resumes from the newest one; when `stop` (a `threading.Event`) is set it checkpoints and
   raises `TrainingStopped`: nothing published;
5. saves the adapter into a temporary folder, lets `evaluate(folder)` (or
   `evaluate_on_copy`) score it (metrics and held-out examples for the card), then publishes
   through `AdapterStore.publish` (a staged folder, the card written last, renamed into
   place), and returns the `StoredAdapter`. A run that fails or is stopped at any point
   leaves no listed adapter.

Trainer or a plain loop? Measured with `python -m mmchat.training.measure` (same data,
collator, loss, seed and schedule; 2 shared CPU cores, OMP_WAIT_POLICY=PASSIVE): tiny model,
10 steps of 8: loop 0.041 s/step, Trainer 0.042-0.047 s/step, the same final loss (10.685
both); offline SmolLM2-135M, 8 steps of 8: 2.4-4.2 s/step for both, final loss 0.93509 both.
Speed does not decide it; resuming does: Trainer's checkpoints hold a pickled optimizer
(`torch.load`), which this project never loads, and continuing to the same weights needs
the optimizer, scheduler, RNG and data position back. The loop keeps all four in
safetensors + JSON and is short enough to read; `measure.with_trainer` keeps Trainer for
re-measuring. On a 4-bit CUDA base the loop runs under bf16 autocast, as Trainer would.

What LoRA goes on (`prepare_model`): on the offline model, `target_modules` of the decoder
layers from `layers_from`. On LLaVA presets, `llava_targets` chooses among "language" (that
same LoRA on the language model only), "projector" (`multi_modal_projector` as peft's
`modules_to_save`: a full trained copy saved in the adapter, as LLaVA trains its projector)
and "vision" (LoRA on the vision tower's q/k/v/out projections, from `vision_layers_from`, on
the layers whose output the projector reads). Seed guidance: the language model's attention
first, the projector next, the vision tower last; r 4-16, alpha >= r, dropout <= 0.05. The
projector alone is refused (a peft adapter needs a LoRA layer), and so is any LLaVA target on
the offline kind (its projector is `mmchat.training.visual`'s). The projector and the vision
tower learn only from examples with pictures.

Same seed, same data and same machine -> identical weights (tested). What it does not do:
choose datasets, evaluate by itself, or serve the adapter (that is `mmchat.adapters.host`).
"""

from __future__ import annotations

import itertools
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
from mmchat.training.pixels import PixelRenderer

Progress = Callable[[int, int, float], None]
OnEvent = Callable[[dict[str, Any]], None]
Sample = Callable[[Any], list[dict[str, str]]]  # the model in eval mode -> [{"prompt", "answer"}]
Evaluate = Callable[[Path], tuple[dict[str, Any], list[dict[str, str]]]]
EvaluateOnCopy = Callable[[Path, Any, Any], tuple[dict[str, Any], list[dict[str, str]]]]


class TrainingStopped(UserFacingError):
    """The stop event was set; nothing was published."""


def _targets(config: TrainingConfig, kind: str, model: Any) -> dict[str, Any]:
    """LoraConfig keyword arguments for the targets (LLaVA kinds: the parts in `llava_targets`)."""
    if kind == "offline":
        if config.llava_targets != ("language",):
            raise UserFacingError(
                f"llava_targets {list(config.llava_targets)} applies to LLaVA presets only; the offline model's "
                "projector and prompt vectors are chosen with VisualTargets (mmchat.training.visual); "
                "accepted here: ['language'] (the default)"
            )
        names, chosen = _language_targets(config, model)
        extra = {"layers_to_transform": list(chosen)} if config.layers_from else {}
        return {"target_modules": names, **extra}
    return _llava_targets(config, model)


def _language_targets(config: TrainingConfig, model: Any) -> tuple[list[str], range]:
    """The checked `target_modules` and the decoder layers `layers_from` chooses."""
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
    return names, range(config.layers_from, layers)


VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # a CLIP/SigLIP encoder layer's attention
PROJECTOR_MODULE = "multi_modal_projector"


def _llava_targets(config: TrainingConfig, model: Any) -> dict[str, Any]:
    """One regex over the language model's and/or the vision tower's layers, and the projector
    as peft's `modules_to_save` (a full copy trained and saved with the adapter, as LLaVA trains
    it in both stages; LoRA on a two-layer MLP would save little and learn less).

    The vision tower has q/k/v projections too, so every pattern names its part of the model.
    Only vision layers whose output reaches the projector are adapted (LLaVA reads the
    penultimate layer by default: LoRA after it would never get a gradient)."""
    parts = set(config.llava_targets)
    if parts == {"projector"}:
        raise UserFacingError(
            "llava_targets ['projector'] trains no LoRA layer, and a peft adapter needs one; accepted: the projector "
            "with 'language' (seed guidance: the language model's attention first, the projector next) or 'vision'"
        )
    patterns = []
    if "language" in parts:
        names, chosen = _language_targets(config, model)
        patterns.append(rf".*language_model.*\.layers\.{_layer_pattern(chosen, config.layers_from == 0)}\..*\."
                        rf"({'|'.join(names)})")
    if "vision" in parts:
        used = _vision_layers_used(model)
        if config.vision_layers_from >= used:
            raise UserFacingError(f"vision_layers_from {config.vision_layers_from} is out of range; this base's "
                                  f"projector reads the output of vision-tower layers 0..{used - 1}: "
                                  f"use 0..{used - 1}")
        chosen = range(config.vision_layers_from, used)
        layers = _layer_pattern(chosen, len(chosen) == _vision_layer_count(model))
        patterns.append(rf".*vision_tower.*\.layers\.{layers}\.self_attn\.({'|'.join(VISION_TARGETS)})")
    targets = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
    extra = {"modules_to_save": [PROJECTOR_MODULE]} if "projector" in parts else {}
    return {"target_modules": targets, **extra}


def _layer_pattern(chosen: range, every: bool) -> str:
    """A regex for the layer indices in `chosen` (any index when it holds `every` layer)."""
    return r"\d+" if every else "(?:" + "|".join(str(i) for i in chosen) + ")"


def _vision_layer_count(model: Any) -> int:
    return int(model.config.vision_config.num_hidden_layers)


def _vision_layers_used(model: Any) -> int:
    """How many vision-tower layers feed the projector (`vision_feature_layer`: an index of the
    hidden states, 0 being the embeddings; negative from the end; or a list of them)."""
    layers = _vision_layer_count(model)
    feature_layer = getattr(model.config, "vision_feature_layer", -1)
    indices = feature_layer if isinstance(feature_layer, (list, tuple)) else [feature_layer]
    hidden = [i if i >= 0 else layers + 1 + i for i in indices]
    return max(1, min(layers, max(hidden)))


def _decoder_layer_count(model: Any) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    return int(config.num_hidden_layers)


def _is_4bit(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def _batches(count: int, batch_size: int, epochs: int, max_steps: int, seed: int,
             strata: Sequence[str] | None = None) -> list[list[int]]:
    """Example indices per step: a seeded shuffle per epoch, cut to `max_steps` (0: all epochs).

    `strata` (one label per example, e.g. its skill): each epoch takes the strata in turn, each
    shuffled, so every batch holds them in equal shares while they last (task-balanced batches:
    a batch of 8 over four skills is 2 + 2 + 2 + 2, not whatever a shuffle deals)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    steps: list[list[int]] = []
    epoch = 0
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(strata or ()):
        groups.setdefault(label, []).append(index)
    while True:
        if strata:
            shuffled = [[members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
                        for members in groups.values()]
            order = [index for turn in itertools.zip_longest(*shuffled) for index in turn if index is not None]
        else:
            order = torch.randperm(count, generator=generator).tolist()
        steps.extend(order[i: i + batch_size] for i in range(0, count, batch_size))
        epoch += 1
        if (max_steps and len(steps) >= max_steps) or (not max_steps and epoch >= epochs):
            break
    return steps[:max_steps] if max_steps else steps


def _from_step(schedule: Callable[[int], float], start: int) -> Callable[[int], float]:
    """An LR multiplier that is 0 before `start` steps have been taken and `schedule` from then on.
    A plain function on purpose: `LambdaLR` keeps no state of one in its checkpoints."""

    def multiplier(step: int) -> float:
        return schedule(step) if step >= start else 0.0

    return multiplier


def _in_model_dtype(model: Any, pixel_values: Any) -> Any:
    """Pixels (float32 from the processor) in the model's float dtype, as `LlavaBackend.prepare`
    casts them (a 4-bit base keeps its vision tower in 16-bit)."""
    return pixel_values.to(model.get_input_embeddings().weight.dtype)


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over answer tokens, projecting to the vocabulary only where needed."""
    import torch.nn.functional as F

    from mmchat.training.collate import answer_positions

    labels = batch["labels"]
    keep = answer_positions(labels)
    extra = {"image_features": batch["image_features"]} if "image_features" in batch else {}
    if "pixel_values" in batch:  # LLaVA examples with images (mmchat.training.pixels)
        extra["pixel_values"] = _in_model_dtype(model, batch["pixel_values"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep.to(labels.device),
                **extra)
    targets = labels[:, keep + 1]
    return F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def step_plan(count: int, config: TrainingConfig, strata: Sequence[str] | None = None) -> list[list[list[int]]]:
    """Example indices per optimizer step: `grad_accum` batches each, from the seeded shuffle
    (balanced over `strata`, one label per example, when given)."""
    if strata is not None and len(strata) != count:
        raise ValueError(f"strata has {len(strata)} labels for {count} examples")
    accum = config.grad_accum
    batches = _batches(count, config.batch_size, config.epochs, config.max_steps * accum, config.seed, strata)
    return [batches[i: i + accum] for i in range(0, len(batches), accum)]


def step_plan_length(count: int, config: TrainingConfig) -> int:
    """How many optimizer steps `step_plan` makes for `count` examples (no torch needed)."""
    if config.max_steps:
        return config.max_steps
    batches = config.epochs * math.ceil(count / config.batch_size)
    return math.ceil(batches / config.grad_accum)


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            import resource

            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def eval_loss(model: Any, encoded: Sequence[Encoded], pad_id: int, batch_size: int) -> float:
    """Mean answer loss over held-out examples (no gradients; the model is put back in train mode)."""
    import torch

    from mmchat.training.collate import collate

    model.eval()
    total, batches = 0.0, 0
    with torch.no_grad():
        device = next(model.parameters()).device
        for i in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[i: i + batch_size], pad_id).items()}
            total += float(answer_loss(model, batch).item())
            batches += 1
    model.train()
    return total / max(1, batches)


def run_loop(
    model: Any,
    encoded: Sequence[Encoded],
    config: TrainingConfig,
    pad_id: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    *,
    checkpoints: Path | None = None,
    on_event: OnEvent | None = None,
    eval_encoded: Sequence[Encoded] = (),
    sample: Sample | None = None,
    stop_at: int = 0,
    groups: list[dict[str, Any]] | None = None,
    strata: Sequence[str] | None = None,
) -> list[float]:
    """Train `model` (a PeftModel) in place; the loss of every step, from step 1 (resumed runs too).

    AdamW with warm-up then linear decay (transformers' `get_linear_schedule_with_warmup`),
    gradient clipping at 1.0, `grad_accum` batches per step. `progress(step, total, loss)` and
    `on_event({"type": "step" | "eval" | "sample" | "checkpoint", "step", ...})` report as it
    goes. With `checkpoints`, the newest checkpoint there is resumed from, one is written every
    `checkpoint_every` steps and when `stop` is set (then `TrainingStopped` is raised), so a
    resumed run ends with the weights an uninterrupted one would have. `stop_at`: end after
    that step (to publish what a stopped run had learnt). `groups`: AdamW parameter groups
    with their own learning rates (default: every trainable parameter at `learning_rate`); a
    group's "start_step": N holds it still for the first N steps (two-stage training).
    `strata`: one label per example for task-balanced batches (see `_batches`).
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from mmchat.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from mmchat.training.collate import collate

    plan = step_plan(len(encoded), config, strata)
    total = len(plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(groups or params, lr=config.learning_rate, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(config.warmup_steps, total), total)
    if groups and any(group.get("start_step") for group in groups):
        # Staged training (LLaVA's two stages): a group with "start_step" N learns from step N + 1.
        linear = scheduler.lr_lambdas[0]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [_from_step(linear, int(g.get("start_step", 0))) for g in optimizer.param_groups])
    losses: list[float] = []
    done = 0
    latest = latest_checkpoint(checkpoints) if checkpoints is not None else None
    if latest is not None:
        losses = [float(x) for x in load_checkpoint(latest, model, optimizer, scheduler)["losses"]]
        done = len(losses)
    emit = on_event or (lambda event: None)
    device = params[0].device
    if device.type == "cuda" and _is_4bit(model) and torch.cuda.is_bf16_supported():  # QLoRA, not run on CPU
        def autocast() -> Any:
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        import contextlib

        autocast = contextlib.nullcontext

    def checkpoint(step: int, rng: Any = None) -> None:
        if checkpoints is not None:
            save_checkpoint(checkpoints, step, model, optimizer, scheduler, losses, rng)
            emit({"type": "checkpoint", "step": step})

    last = min(total, stop_at) if stop_at else total
    model.train()
    started = time.perf_counter()

    def stopped(step: int, rng: Any = None) -> TrainingStopped:
        if step > done:
            checkpoint(step, rng)
        return TrainingStopped(f"training stopped at step {step} of {total}"
                               + ("; resume continues from there" if checkpoints is not None and step else
                                  "; nothing was saved"))

    def run_step(step: int) -> None:
        tick = time.perf_counter()
        rng = torch.get_rng_state()  # what the previous step's checkpoint holds if this one is cut short
        loss_value, tokens = 0.0, 0
        try:
            for indices in plan[step - 1]:
                batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], pad_id).items()}
                with autocast():
                    loss = answer_loss(model, batch) / len(plan[step - 1])
                loss.backward()
                loss_value += float(loss.item())
                tokens += int(batch["attention_mask"].sum())
        except Exception:
            if stop is None or not stop.is_set():
                raise
            optimizer.zero_grad(set_to_none=True)  # cut short by Stop: as if it never began
            raise stopped(step - 1, rng) from None
        if not math.isfinite(loss_value):
            raise UserFacingError(f"the loss became {loss_value} at step {step}; lower learning_rate "
                                  f"({config.learning_rate}) and try again")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_value)
        seconds = time.perf_counter() - tick
        if progress is not None:
            progress(step, total, loss_value)
        emit({"type": "step", "step": step, "total": total, "loss": round(loss_value, 5),
              "lr": scheduler.get_last_lr()[0], "tokens": tokens, "seconds": round(seconds, 4),
              "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
              "elapsed_s": round(time.perf_counter() - started, 2), "rss_mib": round(_rss_mib(), 1)})
        end = step == last
        try:
            if eval_encoded and ((config.eval_every and step % config.eval_every == 0) or end):
                emit({"type": "eval", "step": step, "eval_loss": round(eval_loss(model, eval_encoded, pad_id,
                                                                                config.batch_size), 5)})
            if sample is not None and config.sample_every and (step % config.sample_every == 0 or end):
                model.eval()
                emit({"type": "sample", "step": step, "samples": sample(model)})
                model.train()
        except Exception:
            if stop is None or not stop.is_set():
                raise
            model.train()
            raise stopped(step) from None  # the step itself is complete (no randomness after it)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
            checkpoint(step)  # also at a stop_at: the run continues from there later

    hooks = _abort_hooks(model, stop) if stop is not None else []
    try:
        for step in range(done + 1, last + 1):
            if stop is not None and stop.is_set():
                raise stopped(step - 1)
            run_step(step)
    finally:
        for hook in hooks:
            hook.remove()
    model.eval()
    return losses


def _abort_hooks(model: Any, stop: threading.Event) -> list[Any]:
    """Hooks that end a step in progress soon after `stop` is set (at the next decoder layer,
    forward or backward), so Stop does not wait for a whole step (seconds on a CPU)."""

    def check(*_: Any) -> None:
        if stop.is_set():
            raise RuntimeError("stop requested")

    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    hooks = [layer.register_forward_pre_hook(check) for layer in layers]
    hooks += [layer.register_full_backward_pre_hook(check) for layer in layers]
    return hooks


def prepare_model(model: Any, kind: str, config: TrainingConfig) -> Any:
    """A PeftModel with fresh LoRA weights (seeded) on `model`, on the targets `config` and `kind`
    choose (see the module docstring); QLoRA preparation on a 4-bit base."""
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
    evaluate_on_copy: EvaluateOnCopy | None = None,
    dataset: dict[str, Any] | None = None,
    eval_examples: Sequence[Example] = (),
    sample_examples: Sequence[Example] = (),
    checkpoints: Path | None = None,
    on_event: OnEvent | None = None,
    stop_at: int = 0,
    describe: Any = None,
) -> StoredAdapter:
    """Train a LoRA adapter on a fresh copy of `preset`'s base and publish it into `store`.

    `system_prompt`: the one chat sends (default: the configured default); `evaluate(folder)`
    returns `(metrics, held-out examples)` for the card; `evaluate_on_copy(folder, base,
    processing)` does the same given the training copy with its LoRA layers removed (so it
    can build an evaluation backend without loading the base again); `dataset`: extra
    summary fields for the card (e.g. its source). `eval_examples` give the held-out loss,
    `sample_examples` the sample answers (see `run_loop` for `checkpoints`, `on_event` and
    `stop_at`); `describe(paths)`: the text of real images in examples (offline model).
    Raises `TrainingStopped` when `stop` is set, `UserFacingError` for bad settings or data;
    in every such case nothing is published.
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
    if preset.kind == "offline":
        renderer = Renderer(preset.kind, tokenizer, system_prompt, config.max_length, describe=describe)
    else:  # LLaVA kinds train on the examples' pixels: the projector and vision targets learn from them
        renderer = PixelRenderer(preset.kind, tokenizer, system_prompt, config.max_length)
    encoded = [renderer.encode(example) for example in examples]
    held_out = [renderer.encode(example) for example in eval_examples]
    pad_id = text_tokenizer.pad_token_id if text_tokenizer.pad_token_id is not None else renderer.eos_id
    peft_model = prepare_model(model, preset.kind, config)
    sample = _sampler(renderer, list(sample_examples)) if sample_examples else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA dropout, if any
        losses = run_loop(peft_model, encoded, config, pad_id, progress, stop, checkpoints=checkpoints,
                          on_event=on_event, eval_encoded=held_out, sample=sample, stop_at=stop_at)
    trained_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix=".mmchat-train-") as tmp:
        folder = Path(tmp) / config.name
        peft_model.save_pretrained(str(folder), safe_serialization=True)
        metrics: dict[str, Any] = {}
        gallery: list[dict[str, str]] = []
        target_modules = lora_targets(peft_model)
        if evaluate is not None:
            metrics, gallery = evaluate(folder)
        elif evaluate_on_copy is not None:
            metrics, gallery = evaluate_on_copy(folder, peft_model.unload(), tokenizer)
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
            target_modules=target_modules,
            chat_template=text_tokenizer.chat_template or "",
            dataset={"examples": len(examples), "kinds": kinds, "sha256": dataset_digest(examples),
                     "system_prompt": system_prompt, **(dataset or {})},
            metrics=metrics,
            examples=gallery,
        )

        return store.publish(card, lambda staging: copy_peft_files(folder, staging))


def _sampler(renderer: Renderer, examples: list[Example], max_new_tokens: int = 32) -> Sample:
    """Greedy answers of the model being trained to a few fixed held-out prompts."""
    import torch

    prompts = [renderer.prompt_ids(example) for example in examples]
    # LLaVA examples with pictures: their pixels go with the ids (the image tokens are in the prompt)
    pixels = [renderer.pixel_values(e) if isinstance(renderer, PixelRenderer) else None for e in examples]
    tokenizer = renderer.tokenizer

    def sample(model: Any) -> list[dict[str, str]]:
        answers = []
        with torch.no_grad():
            for example, ids, pixel_values in zip(examples, prompts, pixels):
                inputs = torch.tensor([ids])
                extra = {} if pixel_values is None else {"pixel_values": _in_model_dtype(model, pixel_values)}
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False, **extra,
                                     max_new_tokens=max_new_tokens, eos_token_id=renderer.eos_id,
                                     pad_token_id=tokenizer.pad_token_id or renderer.eos_id)
                answers.append({"prompt": example.question, "expected": example.answer,
                                "answer": tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()})
        return answers

    return sample


def lora_targets(peft_model: Any) -> tuple[str, ...]:
    """The card's `target_modules`: the LoRA config's list (sorted) or its one regex."""
    targets = peft_model.peft_config["default"].target_modules
    return (targets,) if isinstance(targets, str) else tuple(sorted(targets))


def copy_peft_files(folder: Path, staging: Path) -> None:
    """peft's two files from `save_pretrained`'s folder into a staged adapter folder (its
    README.md template is left out: the card says what the adapter is)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(folder / name, staging / name)


__all__ = ["TrainingStopped", "answer_loss", "eval_loss", "prepare_model", "run_loop", "step_plan", "step_plan_length",
           "train_adapter", "copy_peft_files", "lora_targets"]
