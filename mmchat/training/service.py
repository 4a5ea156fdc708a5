"""Fine-tuning as the app offers it: a dataset prepared for the loaded base, runs started and read.

`Finetuner(runtime)` is what the Fine-tune tab (and its API) calls:

- `prepare(...)` reads a dataset (a built-in one, or a file through
  `mmchat.training.datasets.read_dataset`), renders every row with the serving model's own
  tokenizer, template, system prompt and image pathway (`Renderer`, the one the trainer
  uses), reports bad and too-long rows, mixes captions and VQA rows when asked, splits
  train / held-out, and renders a few rows as the model will see them (`preview_html`);
- `settings(preset, **changes)` builds a `TrainingConfig` from a preset (`PRESETS`: quick,
  balanced, thorough; quick visual, two-stage) and the advanced fields, every bad value
  refused by the config; `visual_targets(preset, choice, ...)` builds a visual preset's
  `VisualTargets` from the targets choice (`VISUAL_TARGETS`: LoRA, projector, both,
  two-stage, prompt tuning + LoRA) and its fields, a bad value refused naming the field;
- the built-in shapes dataset (`prepare(builtin="shapes")`) draws `SHAPES_ROWS` training
  pictures and a held-out split of never-seen colour-shape pairs into the datasets folder,
  rendered with the image placeholders the visual run splices its vectors into; it and the
  visual presets go together, and only on the offline base (the image pathway is its own);
- `start(prepared, config, accept_bad, visual=targets)` starts a run in its own process
  through `RunManager`, on the base that is actually loaded (its preset, not the configured
  one an `auto` fallback replaced), with the chat's system prompt, publishing into the user
  store; a name already taken (shipped or user) or a second run is refused before anything
  starts. A visual run's spec carries `"visual"` (the targets) and only the pictures its
  steps use (each seen once), so the trainer computes no features it will not train on;
- `estimate(config, rows)` says how long a run will take from the step time measured by the
  last run on this machine (never a constant), or that the first run will measure it.

It holds no model of its own and never trains in the server's process; tokenizers are
enough here. It imports no torch at import time.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmchat.errors import UserFacingError
from mmchat.training.config import TrainingConfig

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = {"q, v": ("q_proj", "v_proj"), "attention": ATTENTION, "attention + MLP": ATTENTION + MLP}
PREVIEW_ROWS = 3
BUILTIN_ROWS = 256  # rows generated for a built-in dataset (one quick run's worth)
BUILTIN_HELD_OUT = 24  # built-in held-out rows: other templates, classes and facts than the training rows
DATASET_MAX_AGE_S = 24 * 3600  # validated uploads' image copies kept for starting runs
SHAPES_ROWS = 1200  # training pictures drawn (~20 s): the quick visual run's 300 steps of 8 see each twice
SHAPES_MAX_HELD_OUT = 80  # held-out pictures at most (the held-out fraction of SHAPES_ROWS, capped)


@dataclass(frozen=True)
class Preset:
    name: str
    blurb: str
    values: dict[str, Any] = field(default_factory=dict)
    visual: dict[str, Any] | None = None  # a visual preset's VisualTargets fields (None: a text preset)


# The visual recipe (the quick visual preset is `python -m bench finetune --visual`'s headline
# run): LoRA r=16 on q, v at 1e-3, the projector at 3e-3, batches of 8.
VISUAL_RECIPE = {"batch_size": 8, "rank": 16, "alpha": 32, "learning_rate": 1e-3, "target_modules": ("q_proj", "v_proj"),
                 "eval_every": 0, "sample_every": 0, "checkpoint_every": 25}
VISUAL_TARGET_RATES = {"lora": True, "projector": True, "projector_learning_rate": 3e-3, "prompt_learning_rate": 3e-3}

# Measured on the offline SmolLM2 (2 CPU cores): the shipped adapters reached format
# compliance 1.00 with r=8 on attention, lr 2e-3, 32 steps of 8.
PRESETS = {
    "quick": Preset("quick", "30 steps of 8, LoRA r=8 on attention, lr 2e-3: learns a format or a style",
                    {"max_steps": 30, "batch_size": 8, "rank": 8, "alpha": 16, "learning_rate": 2e-3,
                     "target_modules": ATTENTION, "eval_every": 10, "sample_every": 10, "checkpoint_every": 10}),
    "balanced": Preset("balanced", "80 steps of 8, LoRA r=8 on attention, lr 1e-3, warm-up 5",
                       {"max_steps": 80, "batch_size": 8, "rank": 8, "alpha": 16, "learning_rate": 1e-3,
                        "warmup_steps": 5, "target_modules": ATTENTION, "eval_every": 20, "sample_every": 20,
                        "checkpoint_every": 20}),
    "thorough": Preset("thorough", "200 steps of 8, LoRA r=16 on attention + MLP, lr 1e-3, warm-up 10",
                       {"max_steps": 200, "batch_size": 8, "rank": 16, "alpha": 32, "learning_rate": 1e-3,
                        "warmup_steps": 10, "target_modules": ATTENTION + MLP, "eval_every": 25,
                        "sample_every": 25, "checkpoint_every": 25}),
    "quick visual": Preset("quick visual", "300 steps of 8 on the shapes pictures, LoRA r=16 on q, v at lr 1e-3 "
                           "and the projector at 3e-3 (measured on 2 cores: 0.87 held-out exact match in 8.4 minutes "
                           "of training, from 0.00)",
                           {**VISUAL_RECIPE, "max_steps": 300}, visual=VISUAL_TARGET_RATES),
    "two-stage": Preset("two-stage", "200 steps of 8 on the shapes pictures as LLaVA trains: the projector alone "
                        "for 50 steps, then projector + LoRA (r=16 on q, v, lr 1e-3; projector 3e-3)",
                        {**VISUAL_RECIPE, "max_steps": 200}, visual={**VISUAL_TARGET_RATES, "projector_first": 50}),
}
VISUAL_PRESETS = tuple(name for name, preset in PRESETS.items() if preset.visual is not None)
# The targets choice of a visual run -> VisualTargets fields (the seeds' table; as the bench's
# --targets: LoRA alone and prompt tuning read the pictures through a frozen, seeded projector).
VISUAL_TARGETS = {
    "LoRA": {"lora": True, "projector": False},
    "projector": {"lora": False, "projector": True},
    "projector + LoRA": {"lora": True, "projector": True},
    "two-stage (projector, then projector + LoRA)": {"lora": True, "projector": True},
    "prompt tuning + LoRA": {"lora": True, "projector": False},
}
TWO_STAGE, PROMPT_TUNING = "two-stage (projector, then projector + LoRA)", "prompt tuning + LoRA"
MIN_PROMPT_TOKENS = 1
DEFAULT_PROMPT_TOKENS = 16  # prompt tuning's count when none is given (10-20 is the usual range)
DEFAULT_PROJECTOR_FIRST = 50  # two-stage: projector-alone steps when none are given


def visual_choice(targets: dict[str, Any]) -> str:
    """The targets choice that shows a visual preset's `VisualTargets` fields."""
    if targets.get("prompt_tokens"):
        return PROMPT_TUNING
    if targets.get("projector_first"):
        return TWO_STAGE
    return next(label for label, fields in VISUAL_TARGETS.items()
                if all(targets.get(k, True) == v for k, v in fields.items()))


@dataclass
class Prepared:
    """A dataset ready to train on the loaded base (what Validate shows and Train uses)."""

    key: str  # what it was prepared from (source and options): Train re-prepares when it differs
    source: str
    report: Any  # datasets.DatasetReport
    lengths: Any  # datasets.LengthReport
    train: list[Any]
    held_out: list[Any]
    style: str | None  # a built-in style: its format check is part of the evaluation
    preview: list[tuple[str, list[str]]]  # (html, image paths) for the first rows
    max_length: int
    visual: bool = False  # rendered for the image pathway (the shapes pictures): a visual preset trains it

    @property
    def bad_count(self) -> int:
        return len(self.report.bad) + len(self.lengths.bad)

    def summary_markdown(self) -> str:
        from mmchat.training.datasets import report_markdown

        return report_markdown(self.report, self.lengths, (len(self.train), len(self.held_out)))

    def bad_rows(self) -> list[list[str]]:
        from mmchat.training.datasets import bad_rows_table

        return bad_rows_table(self.report, self.lengths)


def preparation_key(source: str, **options: Any) -> str:
    text = repr((source, sorted(options.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Finetuner:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._manager: Any = None
        self._pictures: dict[tuple[Any, ...], tuple[Any, list[Any]]] = {}  # drawn shapes datasets, by their options

    # --- what it needs from the runtime ---
    @property
    def config(self) -> Any:
        return self.runtime.config

    @property
    def manager(self) -> Any:
        from mmchat.training.runs import RunManager

        if self._manager is None:
            self._manager = RunManager(self.config.runs_dir(), threads=self.config.finetune.threads)
        return self._manager

    def base_preset(self) -> dict[str, str]:
        """The base that is actually loaded, as the trainer loads it: its preset's name and its
        source and quantization (a `--model-source` override included; after an `auto`
        fallback, the offline stand-in, not the configured preset)."""
        from mmchat.backends.registry import loaded_preset
        from mmchat.config import PRESETS as MODEL_PRESETS

        self.runtime.wait_ready()
        name = self.runtime.backend.info.preset
        if name not in MODEL_PRESETS:
            raise UserFacingError(f"the loaded model {name!r} is not one of the presets the trainer can load "
                                  f"({', '.join(MODEL_PRESETS)})")
        preset = loaded_preset(self.config.model, name)
        return {"name": preset.name, "source": preset.source, "quantization": preset.quantization}

    def renderer(self, max_length: int) -> Any:
        from mmchat.training.examples import Renderer, image_describer

        self.runtime.wait_ready()
        backend = self.runtime.backend
        info = backend.info
        tokenizer = getattr(backend, "tokenizer", None) or getattr(backend, "processor", None)
        pathway = getattr(backend, "pathway", None)
        describe = image_describer(pathway, self.config.limits) if info.kind == "offline" and pathway else None
        return Renderer(info.kind, tokenizer, self.config.generation.system_prompt, max_length, describe=describe)

    def require_offline(self, what: str) -> None:
        """Refuse `what` (a visual dataset or preset) unless the loaded base is the offline model."""
        self.runtime.wait_ready()
        info = self.runtime.backend.info
        if info.kind != "offline":
            raise UserFacingError(f"{what} trains the offline model's image pathway; the loaded model is "
                                  f"{info.preset!r} ({info.kind}). Start the app with --preset offline to train it")

    def visual_renderer(self, max_length: int) -> Any:
        """The offline model's renderer with each picture as the placeholders a visual run splices
        its image vectors into (what the trainer's `VisualRenderer` encodes; no features computed)."""
        from mmchat.training.visual import VisualRenderer
        from mmchat.vision.features import FeatureSpec

        self.require_offline("the built-in shapes dataset")
        # Only the text side is used here: the spec gives the placeholders per picture.
        return VisualRenderer(self.runtime.backend.tokenizer, self.config.generation.system_prompt, FeatureSpec(),
                              max_length).renderer

    def datasets_dir(self) -> Path:
        """Where uploaded datasets' images are kept until a run copies them (inside the runs folder);
        those older than `DATASET_MAX_AGE_S` go (a run has its own copies)."""
        path = self.config.runs_dir() / ".datasets"
        path.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - DATASET_MAX_AGE_S
        for old in path.iterdir():
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        return path

    # --- preparing a dataset ---
    def prepare(self, *, builtin: str | None = None, path: Path | None = None, display: str | None = None,
                max_length: int = 256, eval_fraction: float = 0.1, caption_to_vqa: tuple[int, int] | None = None,
                seed: int = 0, kept_only: bool = True) -> Prepared:
        from mmchat.training import datasets

        if not 0.0 < eval_fraction < 0.5:
            raise UserFacingError(f"eval_fraction {eval_fraction!r} is out of range; accepted: above 0 and below 0.5")
        if not 32 <= max_length <= 8192:
            raise UserFacingError(f"max_length {max_length!r} is out of range; accepted: an integer 32..8192")
        options = dict(max_length=max_length, eval_fraction=eval_fraction, caption_to_vqa=caption_to_vqa, seed=seed,
                       kept_only=kept_only)
        style, visual, held_out = None, False, None
        if builtin in datasets.VISUAL_BUILTIN:
            renderer = self.visual_renderer(max_length)
            report, held_out = self.shapes(seed, caption_to_vqa,
                                           min(SHAPES_MAX_HELD_OUT, max(4, round(eval_fraction * SHAPES_ROWS))))
            source, visual = report.source, True
        elif builtin:
            if builtin not in datasets.BUILTIN:
                raise UserFacingError(f"built-in dataset {builtin!r} does not exist; accepted: "
                                      f"{', '.join([*datasets.BUILTIN, *datasets.VISUAL_BUILTIN])}")
            report = datasets.builtin_dataset(builtin, BUILTIN_ROWS, seed)
            style, source = builtin, f"builtin:{builtin}"
        elif path is not None:
            with open(path, "rb") as head:  # the first MB and the size name the upload's image folder
                digest = hashlib.sha256(head.read(2**20) + str(Path(path).stat().st_size).encode())
            work = self.datasets_dir() / digest.hexdigest()[:16]
            report = datasets.read_dataset(Path(path), work, datasets.DatasetLimits.from_config(self.config),
                                           kept_only=kept_only, name=display)
            source = report.source
        else:
            raise UserFacingError("choose a built-in dataset or upload a file (JSONL, JSON or zip)")
        if not visual:
            renderer = self.renderer(max_length)
        lengths = datasets.check_lengths(report, renderer)
        usable = datasets.mix(lengths.examples, caption_to_vqa, seed) if caption_to_vqa and not visual \
            else list(lengths.examples)
        if held_out is not None:  # drawn above: pairs and wordings the training pictures never show
            train = usable
        elif style:
            from mmchat.training import builtin_data

            train = usable
            held_out = builtin_data.generate(style, BUILTIN_HELD_OUT, held_out=True)
        else:
            train, held_out = datasets.split(usable, eval_fraction, seed)
        encoded = {id(e): enc for e, enc in zip(lengths.examples, lengths.encoded)}
        preview = [(datasets.preview_html(renderer, e, encoded[id(e)]), list(getattr(e, "images", ())))
                   for e in train[:PREVIEW_ROWS] if id(e) in encoded]
        key = preparation_key(f"builtin:{builtin}" if builtin else str(path), **options)
        return Prepared(key, source, report, lengths, train, held_out, style, preview, max_length, visual)

    def shapes(self, seed: int, caption_to_vqa: tuple[int, int] | None, held_out: int) -> tuple[Any, list[Any]]:
        """The shapes dataset's report and held-out examples, drawn into the datasets folder; kept
        while their pictures are there (drawing 1200 takes ~20 s, and Train after Validate, or a
        second Validate, asks again)."""
        from mmchat.training import datasets

        key = (seed, caption_to_vqa, held_out)
        kept = self._pictures.get(key)
        if kept is None or not all(Path(p).is_file() for e in [*kept[0].examples, *kept[1]] for p in e.images):
            pictures = self.datasets_dir() / f"shapes-{preparation_key('shapes', seed=seed, ratio=caption_to_vqa)}"
            report = datasets.shapes_dataset(SHAPES_ROWS, pictures, seed, caption_to_vqa)
            kept = report, datasets.shapes_dataset(held_out, pictures, seed, caption_to_vqa, held_out=True).examples
            self._pictures = {key: kept}  # one kept at a time
        return kept

    # --- settings ---
    def settings(self, preset: str, **changes: Any) -> TrainingConfig:
        if preset not in PRESETS:
            raise UserFacingError(f"preset {preset!r} does not exist; accepted: {', '.join(PRESETS)}")
        values = {**PRESETS[preset].values, **{k: v for k, v in changes.items() if v is not None}}
        if isinstance(values.get("target_modules"), str):
            targets = values["target_modules"]
            if targets not in TARGETS:
                raise UserFacingError(f"targets {targets!r} are not valid; accepted: {', '.join(TARGETS)}")
            values["target_modules"] = TARGETS[targets]
        config = TrainingConfig.from_mapping(values)
        cap = self.config.finetune.max_steps
        if config.max_steps > cap:
            raise UserFacingError(f"max_steps {config.max_steps} is above this app's cap of {cap} "
                                  "([finetune] max_steps); accepted: 1.." + str(cap))
        return config

    def visual_targets(self, preset: str, choice: str | None = None, *, projector_learning_rate: float | None = None,
                       prompt_tokens: int | None = None, prompt_learning_rate: float | None = None,
                       projector_first: int | None = None) -> Any:
        """A visual preset's `VisualTargets` from the targets `choice` (`VISUAL_TARGETS`; default:
        the preset's own) and its fields (None: the preset's); None for a text preset. The two-stage
        choice needs `projector_first` >= 1 steps, prompt tuning 1..64 `prompt_tokens`."""
        if preset not in PRESETS:
            raise UserFacingError(f"preset {preset!r} does not exist; accepted: {', '.join(PRESETS)}")
        defaults = PRESETS[preset].visual
        if defaults is None:
            return None
        from mmchat.training.visual import MAX_PROMPT_TOKENS, VisualTargets

        choice = choice or visual_choice(defaults)
        if choice not in VISUAL_TARGETS:
            raise UserFacingError(f"visual targets {choice!r} are not valid; accepted: {', '.join(VISUAL_TARGETS)}")
        fields = {**defaults, "projector_first": 0, "prompt_tokens": 0, **VISUAL_TARGETS[choice]}
        if projector_learning_rate is not None:
            fields["projector_learning_rate"] = projector_learning_rate
        if choice == TWO_STAGE:
            steps = (defaults.get("projector_first") or DEFAULT_PROJECTOR_FIRST) if projector_first is None else projector_first
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise UserFacingError(f"projector-first steps {steps!r} are not valid for two-stage training; "
                                      "accepted: a whole number of steps >= 1 (the projector alone, then both)")
            fields["projector_first"] = steps
        if choice == PROMPT_TUNING:
            count = (defaults.get("prompt_tokens") or DEFAULT_PROMPT_TOKENS) if prompt_tokens is None else prompt_tokens
            if isinstance(count, bool) or not isinstance(count, int) or not MIN_PROMPT_TOKENS <= count <= MAX_PROMPT_TOKENS:
                raise UserFacingError(f"prompt tokens {count!r} is out of range; accepted: a whole number "
                                      f"{MIN_PROMPT_TOKENS}..{MAX_PROMPT_TOKENS} (10-20 is usual)")
            fields["prompt_tokens"] = count
            if prompt_learning_rate is not None:
                fields["prompt_learning_rate"] = prompt_learning_rate
        return VisualTargets.from_mapping(fields)

    def estimate(self, config: TrainingConfig, rows: int, visual: bool = False) -> str:
        """'~4 min (3.1 s a step, measured by run X)' from the last run of the same kind (text or
        visual) on this machine, or why not yet."""
        from mmchat.training.engine import step_plan_length

        steps = step_plan_length(rows, config)
        per_example = self.measured_seconds_per_example(visual)
        if per_example is None:
            return f"{steps} steps; the time is estimated once a first run has measured a step on this machine"
        seconds = per_example[0] * config.batch_size * config.grad_accum * steps
        return (f"{steps} steps, about {_duration(seconds)} (measured on this machine by run {per_example[1]}: "
                f"{per_example[0] * config.batch_size:.2f} s a step of {config.batch_size})")

    def measured_seconds_per_example(self, visual: bool = False) -> tuple[float, str] | None:
        """Median seconds per training example of the newest run on this base (text or visual, as
        asked: a picture's vectors make a visual step slower) that took steps."""
        manager = self.manager
        preset = self.runtime.backend.info.preset if self.runtime.ready else None
        for run_id in manager.run_ids():
            files = manager.files(run_id)
            spec = files.spec()
            if (preset and spec.get("preset") != preset) or bool(spec.get("visual")) != visual:
                continue
            steps = [e for e in files.events() if e.get("type") == "step" and e.get("seconds")]
            batch = spec.get("training", {}).get("batch_size", 8) * spec.get("training", {}).get("grad_accum", 1)
            if len(steps) >= 2:
                return statistics.median(e["seconds"] for e in steps[1:]) / batch, run_id
        return None

    # --- starting ---
    def reserved_names(self) -> set[str]:
        """Every adapter name taken in the shipped and the user store."""
        registry = self.runtime.adapters
        return registry.reserved_names() if registry is not None else set()

    def user_store(self) -> Path:
        registry = self.runtime.adapters
        return Path(registry.user_store.root) if registry is not None else self.config.user_adapters_dir()

    def start(self, prepared: Prepared, config: TrainingConfig, accept_bad: bool = False, visual: Any = None) -> str:
        """Start a run; `visual` (a visual preset's `VisualTargets`) trains the image pathway on
        `prepared`'s pictures, which must then be the shapes dataset, on the offline base."""
        if not self.config.finetune.enabled:
            raise UserFacingError("fine-tuning is switched off here ([finetune] enabled = false)")
        train = prepared.train
        if visual is not None:
            self.require_offline("a visual preset")
            if not prepared.visual:
                raise UserFacingError(f"visual presets ({', '.join(VISUAL_PRESETS)}) train the image pathway on the "
                                      f"built-in shapes dataset; {prepared.source} is not it: choose shapes, or a "
                                      "text preset (quick, balanced, thorough)")
            from mmchat.training.engine import step_plan_length

            # Each picture once: the trainer computes features for every row it is given.
            train = train[: step_plan_length(len(train), config) * config.batch_size * config.grad_accum]
        elif prepared.visual:
            raise UserFacingError(f"{prepared.source} trains the image pathway: choose a visual preset "
                                  f"({', '.join(VISUAL_PRESETS)})")
        if prepared.bad_count and not accept_bad:
            raise UserFacingError(f"{prepared.bad_count} row(s) of {prepared.source} are not usable; fix them, or tick "
                                  f"\"train on the {len(prepared.train) + len(prepared.held_out)} usable rows\"")
        if not prepared.train:
            raise UserFacingError(f"{prepared.source} has no usable training rows")
        if config.max_length != prepared.max_length:
            raise UserFacingError(f"max_length changed from {prepared.max_length} to {config.max_length} since the "
                                  "dataset was checked; validate it again")
        taken = self.reserved_names()
        if config.name in taken:
            raise UserFacingError(f"an adapter named {config.name!r} already exists; choose another name")
        base = self.base_preset()
        spec = {
            "training": config.to_dict(),
            "preset": base["name"],
            "base": base,
            "cache_dir": str(self.config.cache_dir()),
            "store": str(self.user_store()),
            "reserved": sorted(taken),
            "system_prompt": self.config.generation.system_prompt,
            "style": prepared.style,
            "dataset": {"source": prepared.source, "rows": len(train), "held_out": len(prepared.held_out),
                        "bad_rows_skipped": prepared.bad_count},
        }
        if visual is not None:
            spec["visual"] = visual.to_dict()
        return self.manager.start(spec, train, prepared.held_out)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["ATTENTION", "MLP", "PRESETS", "TARGETS", "VISUAL_PRESETS", "VISUAL_TARGETS", "Finetuner", "Prepared",
           "Preset", "visual_choice"]
