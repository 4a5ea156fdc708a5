"""The trainer process: one run folder trained, evaluated and published (`python -m mmchat.train --run FOLDER`).

`train_run(folder)` reads the run the server wrote (`mmchat.training.runs`: `run.json`, the
split examples), lowers its own priority, sets its thread count, and calls the same engine
the command line uses (`mmchat.training.engine.train_adapter`) with the run's checkpoints
folder (so it resumes from the newest checkpoint), logging every step, held-out loss and
sample answer to `log.jsonl` and its state to `status.json`. SIGTERM (the tab's Stop, or the
app shutting down) sets the engine's stop event: it checkpoints after the current step and
the run ends `stopped`. When training ends it evaluates base vs adapter on the held-out
rows through the real backend built on the training copy (`mmchat.training.evaluate`),
publishes the adapter with its card into the run's store, and writes `done` with the
metrics and the gallery; the checkpoints are then removed. A bad setting or data, a full
disk, any crash: `failed` with the reason, nothing published. It does not validate datasets
(the server did) and never touches the serving model.

A visual run (`run.json` has "visual": the `VisualTargets`) goes through
`mmchat.training.visual_run.train_visual_adapter` instead, with the same checkpoints, stop,
`stop_at`, step and evaluation events and status fields; its phases (features, training,
publishing) and per-skill held-out metrics land in the same files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from mmchat.errors import UserFacingError
from mmchat.training.runs import CHECKPOINTS, EVAL_FILE, TRAIN_FILE, RunFiles, read_examples

SAMPLE_PROMPTS = 3  # fixed held-out prompts answered every `sample_every` steps (run.json "samples")
GALLERY_ROWS = 8  # evaluation rows kept in the card and status (the tab's gallery)


def image_describer_for(examples: list[Any], preset: Any, cache_dir: Path) -> Any:
    """The text real images become for the offline model (None when no example has one)."""
    if preset.kind != "offline" or not any(getattr(e, "images", ()) for e in examples):
        return None
    from mmchat.backends.offline import ClassifierLabelPathway
    from mmchat.training.examples import image_describer
    from mmchat.vision.imagenet import shared_classifier

    return image_describer(ClassifierLabelPathway(shared_classifier(cache_dir)))


def train_run(folder: Path, *, threads: int = 0, stop_at: int = 0) -> int:
    """Train the run in `folder`; the process's exit status (0 done, 1 failed, 3 stopped)."""
    from mmchat.adapters.store import AdapterStore
    from mmchat.config import PRESETS
    from mmchat.training.config import TrainingConfig
    from mmchat.training.engine import TrainingStopped, step_plan_length, train_adapter

    files = RunFiles(folder)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        os.nice(10)  # the server answers chat first
    except OSError:
        pass
    files.write_status(state="running", phase="loading the base model", pid=os.getpid(), error="")
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        spec = files.spec()
        config = TrainingConfig.from_mapping(spec["training"])
        preset = PRESETS[spec["preset"]]
        overrides = {k: v for k, v in (spec.get("base") or {}).items() if k in ("source", "quantization") and v}
        if overrides:  # the loaded base's own source (e.g. --model-source local-dir:...)
            preset = dataclasses.replace(preset, **overrides)
        cache_dir = Path(spec["cache_dir"]).expanduser()
        train = read_examples(folder / TRAIN_FILE)
        held_out = read_examples(folder / EVAL_FILE)
        store = AdapterStore(Path(spec["store"]))
        if config.name in spec.get("reserved", ()):  # the store's own check follows in train_adapter
            raise UserFacingError(f"an adapter named {config.name!r} already exists; choose another name")
        total = step_plan_length(len(train), config)
        files.write_status(total_steps=min(total, stop_at) if stop_at else total, phase="rendering the examples")

        def on_event(event: dict[str, Any]) -> None:
            files.log(event)
            if event["type"] == "step":
                if event["step"] == 1 or event["step"] % 5 == 0:
                    files.write_status(phase="training")

        def evaluate_on_copy(adapter_folder: Path, base: Any, processing: Any) -> tuple[dict, list]:
            if not held_out:
                return {}, []
            from mmchat.training.evaluate import Evaluator, evaluate_examples, evaluation_backend

            files.write_status(state="evaluating", phase="evaluating base vs adapter on the held-out rows")
            backend = evaluation_backend(base, processing, preset, cache_dir)
            backend.adapters.load("candidate", adapter_folder)
            evaluator = Evaluator(backend, spec.get("system_prompt") or "")

            def progress(done: int, count: int) -> None:
                files.log({"type": "evaluation", "done": done, "total": count})
                files.write_status(evaluation={"done": done, "total": count})

            result = evaluate_examples(evaluator, held_out, "candidate", style=spec.get("style") or None,
                                       progress=progress)
            files.write_status(gallery=result.gallery)
            return result.metrics, result.gallery[:GALLERY_ROWS]

        started = time.time()
        if spec.get("visual"):
            stored = _train_visual(files, spec, config, train, held_out, store, preset, cache_dir, stop, on_event,
                                   stop_at)
        else:
            describe = image_describer_for(train + held_out, preset, cache_dir)
            stored = train_adapter(
                config, train, store, preset=preset, cache_dir=cache_dir, system_prompt=spec.get("system_prompt"),
                stop=stop, evaluate_on_copy=evaluate_on_copy, dataset=spec.get("dataset") or {},
                eval_examples=held_out,
                sample_examples=held_out[: int(spec.get("samples", SAMPLE_PROMPTS))] if config.sample_every else (),
                checkpoints=folder / CHECKPOINTS, on_event=on_event, stop_at=stop_at, describe=describe,
            )
    except TrainingStopped as err:
        files.log({"type": "end", "state": "stopped", "message": str(err)})
        files.write_status(state="stopped", phase="", error="")
        return 3
    except UserFacingError as err:
        files.log({"type": "end", "state": "failed", "message": str(err)})
        files.write_status(state="failed", phase="", error=str(err))
        return 1
    except BaseException as err:  # a crash: the reason and the traceback's end, for the tab
        print(traceback.format_exc(), flush=True)
        files.log({"type": "end", "state": "failed", "message": f"{err.__class__.__name__}: {err}"})
        files.write_status(state="failed", phase="", error=f"the trainer crashed ({err.__class__.__name__}: {err})")
        return 1
    files.log({"type": "end", "state": "done", "adapter": stored.name, "seconds": round(time.time() - started, 1)})
    files.write_status(state="done", phase="", adapter=stored.name, metrics=stored.card.metrics,
                       store=str(stored.folder.parent))
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)  # the adapter is published: they are not needed
    return 0


def _train_visual(files: RunFiles, spec: dict[str, Any], config: Any, train: list[Any], held_out: list[Any],
                  store: Any, preset: Any, cache_dir: Path, stop: threading.Event, on_step: Any, stop_at: int) -> Any:
    """A visual run through `train_visual_adapter`, its events turned into the run's log and status."""
    from mmchat.training.visual import VisualTargets
    from mmchat.training.visual_run import train_visual_adapter

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "phase":  # not logged: the status says what the trainer does now
            files.write_status(phase=event["phase"])
        elif event["type"] == "evaluation":
            files.log(event)
            files.write_status(state="evaluating", phase="evaluating base vs adapter on the held-out pictures",
                               evaluation={"done": event["done"], "total": event["total"]})
        else:
            on_step(event)

    stored, gallery = train_visual_adapter(
        config, VisualTargets.from_mapping(spec["visual"]), train, store, preset=preset, cache_dir=cache_dir,
        system_prompt=spec.get("system_prompt") or "", held_out=held_out, dataset=spec.get("dataset") or {},
        stop=stop, on_event=on_event, checkpoints=files.folder / CHECKPOINTS, stop_at=stop_at)
    files.write_status(gallery=gallery)
    return stored


__all__ = ["image_describer_for", "train_run"]
