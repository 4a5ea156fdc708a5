"""Command line: train a LoRA adapter (with [visual]: a visual adapter) and publish it into the adapter store.

    python -m mmchat.train CONFIG.toml [--store DIR] [--cache-dir DIR]

CONFIG.toml::

    [training]                 # mmchat.training.config.TrainingConfig: name and description required
    name = "short-answers"
    description = "answers in one word"
    rank = 8
    learning_rate = 2e-3
    max_steps = 40

    [dataset]
    source = "data.jsonl"      # a dataset file relative to this one (JSONL, JSON list, zip with images,
                               # chat export; see mmchat.training.datasets), or "builtin:one-word" /
                               # "builtin:caption" / "builtin:json" / "builtin:shapes" (pictures: needs [visual])
    examples = 320             # built-in datasets only: how many to generate
    caption_to_vqa = [1, 2]    # builtin:shapes only: captions : questions (default [0, 1], questions only)
    seed = 0                   # seeds the image descriptions (and the built-in generator; 0: its own)
    kept_only = true           # chat exports: only answers that ended on their own
    skip_bad = false           # true: train on the usable rows of a file with bad rows

    [model]
    preset = "offline"         # the base to train on (a copy of it; never a serving model)

    [adapters]
    path = "adapters"          # the store (default: the project's adapters/ folder; --store wins)

    [generation]
    system_prompt = "..."      # default: the app's default system prompt (what chat sends)

    [visual]                   # train the offline model's image pathway (mmchat.training.visual.VisualTargets)
    lora = true                # LoRA on the language model ([training] rank, alpha, target_modules)
    projector = true           # the projector, at its own learning rate
    projector_learning_rate = 3e-3
    projector_first = 0        # two-stage: the projector alone for this many steps first
    prompt_tokens = 0          # prompt tuning: learned soft-prompt vectors (1..64), at prompt_learning_rate

With a `[visual]` table the run trains the offline model's image pathway on the dataset's
pictures (`mmchat.training.visual_run`): LoRA and/or the projector, two-stage or prompt
tuning, published with `projector.safetensors`.

It prints one line per step (step, total, loss) and the published adapter's folder; a bad
value is reported as one line naming it and what is accepted (exit status 2). Ctrl-C stops
training and publishes nothing.

    python -m mmchat.train --run FOLDER [--threads N] [--stop-at STEP]

trains a run folder the app's Fine-tune tab prepared (`mmchat.training.runs`), with
checkpoints, resume, `log.jsonl` and `status.json` (`mmchat.training.trainer`), and
evaluates base vs adapter on the run's held-out rows. The TOML path does not evaluate
adapters (see `mmchat.training.shipped` for the built-in ones); neither starts the app.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

# Measured on a shared 2-core machine: with OpenMP's default busy-waiting, a training step of
# the tiny model took 1.28 s while other processes ran; with PASSIVE, 0.04 s. Before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmchat.config import PRESETS, AdaptersConfig, GenerationDefaults, read_toml  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402

SECTIONS = ("training", "dataset", "model", "adapters", "generation", "visual")


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    data = read_toml(path, "training config")  # a ConfigError, which is a UserFacingError
    unknown = sorted(k for k in data if k not in SECTIONS or not isinstance(data[k], dict))
    if unknown:
        raise UserFacingError(f"unknown entries {unknown} in {str(path)!r}; accepted tables: {', '.join(SECTIONS)}")
    if "training" not in data:
        raise UserFacingError(f"{str(path)!r} has no [training] table (name and description are required)")
    return data


def load_dataset(table: dict[str, Any], base_dir: Path, work_dir: Path | None = None) -> tuple[list[Any], dict[str, Any]]:
    """The examples and the card's dataset fields, from a [dataset] table.

    Keys: `source` (a dataset file relative to `base_dir`, read by
    `mmchat.training.datasets.read_dataset`, or builtin:NAME), `examples` and `seed` (built-in
    datasets; `seed` also seeds the invented photo labels of `image_label` rows), `kept_only`
    (chat exports: only answers that ended on their own; default true) and `skip_bad` (train on
    the usable rows of a file with bad rows; default false: bad rows are refused, the first
    ones named), and `caption_to_vqa` (builtin:shapes: captions : questions). Image copies and
    the shapes pictures go to `work_dir` (default: `base_dir/.mmchat-dataset`).
    """
    from mmchat.training import builtin_data
    from mmchat.training.datasets import VISUAL_BUILTIN, DatasetLimits, builtin_dataset, read_dataset, shapes_dataset

    accepted = ("source", "examples", "seed", "kept_only", "skip_bad", "caption_to_vqa")
    unknown = sorted(set(table) - set(accepted))
    if unknown:
        raise UserFacingError(f"unknown [dataset] key(s) {unknown}; accepted: {', '.join(accepted)}")
    source = table.get("source")
    if not isinstance(source, str) or not source:
        raise UserFacingError("[dataset] source is missing; accepted: a dataset file (JSONL, JSON or zip) or "
                              f"builtin:NAME ({', '.join([*builtin_data.STYLES, *VISUAL_BUILTIN])})")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserFacingError(f"[dataset] seed {seed!r} is not valid; accepted: an integer >= 0")
    for key in ("kept_only", "skip_bad"):
        if not isinstance(table.get(key, True), bool):
            raise UserFacingError(f"[dataset] {key} {table[key]!r} is not valid; accepted: true or false")
    if source.startswith("builtin:"):
        count = table.get("examples", builtin_data_default())
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
            raise UserFacingError(f"[dataset] examples {count!r} is out of range; accepted: 1..100000")
        if source.removeprefix("builtin:") in VISUAL_BUILTIN:
            ratio = table.get("caption_to_vqa")
            report = shapes_dataset(count, work_dir or base_dir / ".mmchat-dataset", seed,
                                    tuple(ratio) if isinstance(ratio, list) else ratio)
            return report.examples, {"source": source, "seed": seed, "caption_to_vqa": ratio or [0, 1]}
        if "caption_to_vqa" in table:
            raise UserFacingError("[dataset] caption_to_vqa applies to builtin:shapes only")
        report = builtin_dataset(source.removeprefix("builtin:"), count, seed=seed)
        return report.examples, {"source": source, "seed": seed}
    for key in ("examples", "caption_to_vqa"):
        if key in table:
            raise UserFacingError(f"[dataset] {key} applies to builtin: datasets only; a dataset file uses all its rows")
    path = (base_dir / source).resolve()
    if not path.is_file():
        raise UserFacingError(f"[dataset] source {source!r} is not a file here ({path}); accepted: a dataset file "
                              "(JSONL, JSON or zip) or builtin:NAME")
    report = read_dataset(path, work_dir or base_dir / ".mmchat-dataset", DatasetLimits(),
                          kept_only=table.get("kept_only", True), seed=seed)
    if report.bad and not table.get("skip_bad", False):
        shown = "; ".join(f"{b.where}: {b.reason}" for b in report.bad[:3])
        more = f" (and {len(report.bad) - 3} more)" if len(report.bad) > 3 else ""
        raise UserFacingError(f"{path.name} has {len(report.bad)} bad row(s): {shown}{more}; fix them, or set "
                              f"[dataset] skip_bad = true to train on the {len(report.examples)} usable rows")
    if not report.examples:
        raise UserFacingError(f"{path.name} has no usable rows; accepted: {{\"question\", \"answer\"}}, "
                              "{\"instruction\", \"output\"} or {\"messages\": [...]} rows")
    return report.examples, {"source": path.name, "seed": seed, "formats": report.formats}


def visual_targets(data: dict[str, Any], source: str) -> Any:
    """The [visual] table as `VisualTargets` (None without one); builtin:shapes needs it."""
    from mmchat.training.datasets import VISUAL_BUILTIN

    if "visual" not in data:
        if source.removeprefix("builtin:") in VISUAL_BUILTIN:
            raise UserFacingError(f"[dataset] source {source!r} trains the image pathway; add a [visual] table "
                                  "(e.g. lora = true, projector = true)")
        return None
    from mmchat.training.visual import VisualTargets

    return VisualTargets.from_mapping(data["visual"])


def builtin_data_default() -> int:
    from mmchat.training.shipped import TRAIN_EXAMPLES

    return TRAIN_EXAMPLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmchat.train", description="Train a LoRA adapter.")
    parser.add_argument("config", nargs="?", help="the training config (TOML)")
    parser.add_argument("--store", help="adapter store folder (default: [adapters] path, else adapters/)")
    parser.add_argument("--cache-dir", default=None, help="where converted weights are cached (~/.cache/mmchat)")
    parser.add_argument("--run", help="train a run folder the app prepared (mmchat.training.runs) instead")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (with --run; 0: torch's default)")
    parser.add_argument("--stop-at", type=int, default=0, help="with --run: end after this step and publish")
    args = parser.parse_args(argv)
    if args.run:
        from mmchat.training.trainer import train_run

        return train_run(Path(args.run).resolve(), threads=args.threads, stop_at=args.stop_at)
    if not args.config:
        parser.error("give a training config (TOML) or --run FOLDER")
    stop = threading.Event()
    try:
        from mmchat.adapters.store import AdapterStore
        from mmchat.training.config import TrainingConfig
        from mmchat.training.engine import train_adapter

        config_path = Path(args.config)
        data = read_config(config_path)
        config = TrainingConfig.from_mapping(data["training"])
        examples, dataset = load_dataset(data.get("dataset", {}), config_path.parent)
        model = data.get("model", {})
        preset_name = model.get("preset", "offline")
        if preset_name not in PRESETS:
            raise UserFacingError(f"[model] preset {preset_name!r} is not valid; accepted: {', '.join(PRESETS)}")
        cache_dir = Path(args.cache_dir or model.get("cache_dir") or "~/.cache/mmchat").expanduser()
        if args.store:
            store_path = Path(args.store).expanduser()
        else:  # the app's own [adapters] path rule (default: the project's adapters/ folder)
            adapters = AdaptersConfig(path=str(data.get("adapters", {}).get("path", "")))
            store_path = adapters.resolved_path()
        store = AdapterStore(store_path)
        system_prompt = data.get("generation", {}).get("system_prompt", GenerationDefaults().system_prompt)
        visual = visual_targets(data, dataset["source"])
        print(f"training {config.name!r} on {preset_name} with {len(examples)} examples"
              + (f", visual: {visual.label}" if visual else ""), flush=True)

        def progress(step: int, total: int, loss: float) -> None:
            print(f"step {step}/{total} loss {loss:.4f}", flush=True)

        if visual is not None:
            from mmchat.training.visual_run import train_visual_adapter

            stored, _ = train_visual_adapter(config, visual, examples, store, preset=PRESETS[preset_name],
                                             cache_dir=cache_dir, system_prompt=system_prompt, dataset=dataset,
                                             stop=stop, progress=progress)
        else:
            from mmchat.training.trainer import image_describer_for

            stored = train_adapter(config, examples, store, preset=PRESETS[preset_name], cache_dir=cache_dir,
                                   system_prompt=system_prompt, progress=progress, stop=stop, dataset=dataset,
                                   describe=image_describer_for(examples, PRESETS[preset_name], cache_dir))
    except UserFacingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; nothing was saved", file=sys.stderr)
        return 130
    print(f"published {stored.name} in {stored.folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
