"""Fine-tuning on the offline model, through the very path the Fine-tune tab uses.

`python -m bench finetune [--steps N] [--rows N] [--ttft-runs N]` measures, in one run on the
offline SmolLM2 (check the machine is idle first: 2 cores, and the trainer takes one):

(a) the quick preset on a user-style dataset written here (not a built-in one: support
    answers in the form "Answer: … / Confidence: high|medium|low", with questions about
    made-up products and places), trained by a real trainer process (`RunManager`, as the
    tab starts it): the minutes until the sample answers to 10 held-out prompts reach
    format compliance >= 0.9, and the final held-out scores (format, base vs adapter);
(b) chat time to first token while that run trains vs idle (same prompt, same backend);
(c) stop latency: Stop pressed on a second run to the run reading `stopped`;
(d) engine step time through the trainer process vs the same engine in this process
    (same config, same thread count), the ratio.

Prints one table and writes `bench/results/finetune.json`. Publishes its adapters into a
temporary store, never into the project.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FORMAT = re.compile(r"Answer: [^\n]+\nConfidence: (high|medium|low)\.?")
PRODUCTS = ["the Orbit kettle", "the Lumen desk lamp", "the Trail 40 backpack", "the Nimbus umbrella",
            "the Pico label printer", "the Harbor rain jacket", "the Atlas wall map", "the Quill pen set",
            "the Ember space heater", "the Delta bike lock", "the Fjord water bottle", "the Sable office chair"]
PLACES = ["the Riverside store", "the airport kiosk", "the north warehouse", "the downtown branch",
          "the online shop", "the harbour outlet"]
ASKS = [
    ("How long is the warranty on {p}?", "The warranty on {p} lasts {n} years.", "high"),
    ("Can I return {p} after {n} weeks?", "Returns of {p} are accepted within {m} weeks of purchase.", "medium"),
    ("Is {p} in stock at {s}?", "{P} is usually in stock at {s}, but check before you travel.", "low"),
    ("What colour does {p} come in?", "{P} comes in grey and in dark blue.", "medium"),
    ("How do I clean {p}?", "Wipe {p} with a damp cloth and let it dry.", "high"),
    ("Does {p} ship to {s}?", "Yes, {p} ships to {s} within {n} days.", "medium"),
    ("Who repairs {p}?", "The service desk at {s} repairs {p}.", "low"),
    ("What does {p} weigh?", "{P} weighs about {n} kilograms.", "medium"),
]


def support_rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer, confidence = rng.choice(ASKS)
        product, place = rng.choice(PRODUCTS), rng.choice(PLACES)
        values = {"p": product, "P": product[0].upper() + product[1:], "s": place, "n": rng.randint(2, 9),
                  "m": rng.randint(2, 6)}
        rows.append({"question": question.format(**values),
                     "answer": f"Answer: {answer.format(**values)}\nConfidence: {confidence}."})
    return rows


def ttft(backend, params, question: str) -> float:
    messages = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": [{"type": "text", "text": question}]}]
    started = time.perf_counter()
    stream = iter(backend.stream(backend.prepare(messages, []), params))
    next(stream)
    elapsed = time.perf_counter() - started
    for _ in stream:
        pass
    return elapsed


def main(argv: list[str] | None = None) -> int:
    if argv and "--visual" in argv:
        return visual(argv)
    parser = argparse.ArgumentParser(prog="python -m bench finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="user-style dataset rows (10%% held out)")
    parser.add_argument("--steps", type=int, default=30, help="steps of the quick run (the preset's 30)")
    parser.add_argument("--ttft-runs", type=int, default=5)
    parser.add_argument("--cache-dir", default="~/.cache/mmchat")
    args = parser.parse_args(argv)

    from mmchat.backends.base import GenerationParams
    from mmchat.backends.offline import OfflineBackend
    from mmchat.config import PRESETS, GenerationDefaults
    from mmchat.training.datasets import DatasetLimits, read_dataset, split
    from mmchat.training.runs import RunManager
    from mmchat.training.service import PRESETS as TRAIN_PRESETS

    cache_dir = Path(args.cache_dir).expanduser()
    work = Path(tempfile.mkdtemp(prefix="mmchat-bench-finetune-"))
    data = work / "support.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in support_rows(args.rows)) + "\n", encoding="utf-8")
    report = read_dataset(data, work / "images", DatasetLimits())
    train, held_out = split(report.examples, 0.1, seed=0)
    manager = RunManager(work / "runs")
    system = GenerationDefaults().system_prompt
    preset = dict(TRAIN_PRESETS["quick"].values, max_steps=args.steps, sample_every=5, eval_every=10,
                  checkpoint_every=10, target_modules=list(TRAIN_PRESETS["quick"].values["target_modules"]))

    def spec(name: str, **changes) -> dict:
        return {"training": {"name": name, "description": "bench", **preset, **changes}, "preset": "offline",
                "cache_dir": str(cache_dir), "store": str(work / "adapters"), "system_prompt": system,
                "samples": 10, "dataset": {"source": "bench support.jsonl"}}

    backend = OfflineBackend.from_preset(PRESETS["offline"], cache_dir)
    params = GenerationParams(max_new_tokens=8, temperature=0.0)
    question = "What is the capital of France?"
    ttft(backend, params, question)  # warm-up
    idle = [ttft(backend, params, question) for _ in range(args.ttft_runs)]

    started = time.perf_counter()
    run_id = manager.start(spec("bench-support"), train, held_out)
    busy: list[float] = []
    while manager.status(run_id)["state"] in ("starting", "running", "evaluating"):
        status = manager.status(run_id)
        if status["state"] == "running" and status["step"] >= 1 and len(busy) < args.ttft_runs:
            busy.append(ttft(backend, params, question))
        time.sleep(2.0)
    wall = time.perf_counter() - started
    status = manager.status(run_id)
    events = manager.files(run_id).events()
    first_step = next(e for e in events if e.get("type") == "step")
    reached = None
    for event in events:
        if event.get("type") == "sample":
            rate = sum(bool(FORMAT.fullmatch(s["answer"].strip())) for s in event["samples"]) / len(event["samples"])
            if rate >= 0.9 and reached is None:
                step_event = next(e for e in events if e.get("type") == "step" and e["step"] == event["step"])
                reached = (event["step"], step_event["time"] - first_step["time"] + first_step["seconds"], rate)
    subprocess_step = statistics.median(e["seconds"] for e in events if e.get("type") == "step")

    stop_id = manager.start(spec("bench-stop", max_steps=500), train, held_out)
    while manager.status(stop_id)["step"] < 2:
        time.sleep(0.2)
    t0 = time.perf_counter()
    manager.stop(stop_id)
    stop_s = time.perf_counter() - t0
    manager.delete(stop_id)

    import torch

    from mmchat.adapters.store import AdapterStore
    from mmchat.training.config import TrainingConfig
    from mmchat.training.engine import train_adapter

    torch.set_num_threads(manager.threads)
    steps: list[float] = []
    train_adapter(TrainingConfig.from_mapping(dict(spec("bench-inproc", max_steps=8, sample_every=0, eval_every=0,
                                                        checkpoint_every=0)["training"])),
                  train, AdapterStore(work / "inproc"), preset=PRESETS["offline"], cache_dir=cache_dir,
                  system_prompt=system, on_event=lambda e: steps.append(e["seconds"]) if e["type"] == "step" else None)
    inproc_step = statistics.median(steps)

    metrics = status.get("metrics") or {}
    gallery = status.get("gallery") or []

    def compliance(side: str) -> float | None:
        return round(sum(bool(FORMAT.fullmatch(str(r.get(side, "")).strip())) for r in gallery) / len(gallery), 3) \
            if gallery else None

    held_out_format = {"base": compliance("base"), "adapter": compliance("adapter")}
    result = {
        "rows": {"train": len(train), "held_out": len(held_out)}, "threads": manager.threads,
        "quick_run": {"state": status["state"], "steps": status["step"], "wall_s": round(wall, 1),
                      "format_0.9_at": {"step": reached[0], "minutes": round(reached[1] / 60, 2), "rate": reached[2]}
                      if reached else None,
                      "held_out_format": held_out_format, "held_out_base": metrics.get("base"),
                      "held_out_adapter": metrics.get("adapter")},
        "ttft_s": {"idle_p50": round(statistics.median(idle), 3), "training_p50": round(statistics.median(busy), 3)
                   if busy else None},
        "stop_s": round(stop_s, 2),
        "step_s": {"subprocess": round(subprocess_step, 3), "in_process": round(inproc_step, 3)},
    }
    ratio_ttft = result["ttft_s"]["training_p50"] / result["ttft_s"]["idle_p50"] if busy else float("nan")
    print(json.dumps(result, indent=1))
    print(f"(a) quick run: format >= 0.9 at "
          + (f"step {reached[0]}, {reached[1] / 60:.1f} min" if reached else "never")
          + f"; whole run {wall / 60:.1f} min incl. evaluation; held-out format base "
          f"{held_out_format['base']} -> adapter {held_out_format['adapter']} ({len(gallery)} rows)")
    print(f"(b) chat first token while training / idle: {ratio_ttft:.2f}x "
          f"({result['ttft_s']['training_p50']} s vs {result['ttft_s']['idle_p50']} s)")
    print(f"(c) stop latency: {stop_s:.2f} s")
    print(f"(d) step time subprocess / in-process: {subprocess_step / inproc_step:.2f}x "
          f"({subprocess_step:.2f} s vs {inproc_step:.2f} s, {manager.threads} thread(s))")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "finetune.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --targets: the seeds' rows (LoRA alone reads the images through a frozen, seeded projector).
TARGET_CHOICES = {
    "projector+lora": {},
    "lora": {"projector": False},
    "projector": {"lora": False},
    "prompt+lora": {"projector": False, "prompt_tokens": 16},
    "prompt+projector+lora": {"prompt_tokens": 16},
    "two-stage": {"projector_first": 50},
}


def visual(argv: list[str] | None = None) -> int:
    """`python -m bench finetune --visual`: the offline model learns to see (issue 13's headline).

    The built-in shapes dataset (VQA rows: colour, shape, count, position; held-out split with
    colour-shape pairs and question wordings never trained on), LoRA r=16 on q/v + a fresh
    projector (lr 3e-3) over frozen EfficientNet-Lite0 features, batch 8, through the engine's
    loop; held-out exact match per skill for the base (today's label pathway) and every
    `--eval-every` steps for the adapter, training wall time (evaluation excluded), tokens/s,
    and the loss curve as a PNG (bench/results/finetune-visual-loss.png).
    """
    from mmchat.training.service import PRESETS as TAB_PRESETS
    from mmchat.training.service import SHAPES_ROWS

    parser = argparse.ArgumentParser(prog="python -m bench finetune --visual")
    parser.add_argument("--visual", action="store_true")
    # Defaults: the Fine-tune tab's quick visual run (its rows, its steps).
    parser.add_argument("--train", type=int, default=SHAPES_ROWS, help="training rows (one picture each)")
    parser.add_argument("--held-out", type=int, default=120)
    parser.add_argument("--steps", type=int, default=TAB_PRESETS["quick visual"].values["max_steps"])
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--distractors", type=int, default=0,
                        help="at most this many distractors per picture (0..2; the headline is 0)")
    parser.add_argument("--targets", default="projector+lora", choices=sorted(TARGET_CHOICES),
                        help="what learns (the seeds' target table)")
    parser.add_argument("--grid", type=int, default=None, help="feature grid (FeatureSpec.grid; default its own)")
    parser.add_argument("--occupancy", type=int, choices=(0, 1), default=None,
                        help="cells' coloured shares in the tokens (FeatureSpec.occupancy; default its own)")
    parser.add_argument("--cache-dir", default="~/.cache/mmchat")
    args = parser.parse_args(argv)

    from mmchat.backends.offline import ClassifierLabelPathway
    from mmchat.backends.registry import load_base_copy
    from mmchat.config import PRESETS, GenerationDefaults
    from mmchat.training import shapes
    from mmchat.training.config import TrainingConfig
    from mmchat.training.examples import image_describer
    from mmchat.training.visual import VisualRenderer, VisualTargets, evaluate_visual, prepare_visual, train_visual
    from mmchat.vision.features import FeatureSpec, shared_features
    from mmchat.vision.imagenet import shared_classifier

    cache_dir = Path(args.cache_dir).expanduser()
    work = Path(tempfile.mkdtemp(prefix="mmchat-bench-visual-"))
    started = time.perf_counter()
    train = shapes.generate(args.train, seed=0, caption_ratio=(0, 1), out_dir=work / "images",
                            max_distractors=args.distractors)
    held_out = shapes.generate(args.held_out, seed=0, caption_ratio=(0, 1), held_out=True, out_dir=work / "images",
                               max_distractors=args.distractors)
    print(f"dataset: {len(train)} train / {len(held_out)} held-out pictures in {time.perf_counter() - started:.0f} s",
          flush=True)
    model, tokenizer = load_base_copy(PRESETS["offline"], cache_dir)
    config = TrainingConfig(name="shapes", description="sees shapes", rank=16, alpha=32,
                            target_modules=("q_proj", "v_proj"), learning_rate=1e-3, max_steps=args.steps,
                            batch_size=8, seed=0)
    targets = VisualTargets(**TARGET_CHOICES[args.targets])
    chosen = {name: value for name, value in (("grid", args.grid), ("occupancy", args.occupancy)) if value is not None}
    features = shared_features(cache_dir, FeatureSpec(**chosen))
    composite = prepare_visual(model, tokenizer, features, config, targets)
    renderer = VisualRenderer(tokenizer, GenerationDefaults().system_prompt, features,
                              prompt_tokens=targets.prompt_tokens)
    t0 = time.perf_counter()
    for example in train:  # features once per picture, before the clock starts
        renderer.image_features(list(example.images))
    features_s = time.perf_counter() - t0
    labels = image_describer(ClassifierLabelPathway(shared_classifier(cache_dir)))
    base, _ = evaluate_visual(composite, renderer, held_out, base=True, describe=labels)
    print(f"base (label pathway) held-out exact match: {base}", flush=True)

    curve: list[dict] = []
    losses: list[tuple[int, float]] = []
    train_s = 0.0
    tokens = 0

    def on_event(event: dict) -> None:
        nonlocal train_s, tokens
        if event["type"] == "step":
            train_s += event["seconds"]
            tokens += event["tokens"]
            losses.append((event["step"], event["loss"]))

    # One run through `train_visual` (the tab's path), evaluated at the checkpoints the loop
    # writes: a resumed run ends with the weights an uninterrupted one would have.
    checkpoints = work / "checkpoints"
    step_config = TrainingConfig.from_mapping({**config.to_dict(), "checkpoint_every": args.eval_every})
    stop_at = args.eval_every
    while True:
        train_visual(composite, renderer, train, step_config, targets, on_event=on_event, checkpoints=checkpoints,
                     stop_at=stop_at)
        table, replies = evaluate_visual(composite, renderer, held_out)
        curve.append({"step": stop_at, "train_s": round(train_s, 1), **table})
        novel = [(e, r) for e, r in zip(held_out, replies) if e.extra.get("held_out_pair")]
        seen = [(e, r) for e, r in zip(held_out, replies) if not e.extra.get("held_out_pair")]
        split = {name: round(shapes.score_by_skill(*zip(*rows))["all"], 3) for name, rows in
                 (("unseen pairs", novel), ("trained pairs", seen)) if rows}
        print(f"step {stop_at}: {train_s / 60:.1f} min of training, held-out exact match {table} {split}", flush=True)
        wrong = [f"{e.kind}: {e.question!r} {e.answer!r} -> {r!r}" for e, r in zip(held_out, replies)
                 if e.kind != "shape" and shapes.score_by_skill([e], [r])["all"] < 1]
        print("  wrong, e.g.: " + "; ".join(wrong[:10]), flush=True)
        if stop_at >= args.steps:
            break
        stop_at = min(args.steps, stop_at + args.eval_every)
    final = curve[-1]
    reached = next((c for c in curve if c["all"] >= 0.85), None)
    result = {"targets": targets.label + (" (r=16 q,v)" if targets.lora else ""), "grid": features.spec.grid,
              "occupancy": features.spec.occupancy,
              "train_rows": len(train), "held_out_rows": len(held_out), "steps": args.steps, "batch": 8,
              "features_s": round(features_s, 1), "train_s": round(train_s, 1),
              "tokens_per_s": round(tokens / train_s, 1) if train_s else None, "base": base, "curve": curve,
              "reached_0.85": reached, "examples": [{"q": e.question, "expected": e.answer, "reply": r}
                                                   for e, r in list(zip(held_out, replies))[:8]]}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = "finetune-visual" + ("" if args.targets == "projector+lora" else "-" + args.targets.replace("+", "-"))
    (out / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    _plot(losses, curve, out / f"{name}-loss.png")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1))
    print(f"visual: held-out exact match base {base['all']:.2f} -> adapter {final['all']:.2f} "
          f"({', '.join(f'{k} {base[k]:.2f}->{final[k]:.2f}' for k in final if k not in ('step', 'train_s', 'all'))}); "
          f"{train_s / 60:.1f} min of training ({args.steps} steps of 8, {result['tokens_per_s']} tokens/s); "
          + (f">= 0.85 at step {reached['step']} ({reached['train_s'] / 60:.1f} min)" if reached else "0.85 not reached"))
    return 0


def _plot(losses: list[tuple[int, float]], curve: list[dict], path: Path) -> None:
    """The loss (blue) and held-out exact match (orange, 0..1) against the step, drawn with PIL."""
    from PIL import Image, ImageDraw

    width, height, pad = 760, 360, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    last = max([s for s, _ in losses] + [1])
    top = max([v for _, v in losses] + [1e-6])

    def xy(step: float, value: float, high: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * step / last, height - pad - (height - 2 * pad) * value / high

    draw.rectangle([pad, pad, width - pad, height - pad], outline="#999999")
    if len(losses) > 1:
        draw.line([xy(s, v, top) for s, v in losses], fill="#1f77b4", width=2)
    points = [xy(c["step"], c["all"], 1.0) for c in curve]
    if len(points) > 1:
        draw.line(points, fill="#ff7f0e", width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="#ff7f0e")
    draw.text((pad, 12), f"training loss (blue, 0..{top:.2f}) and held-out exact match (orange, 0..1) over "
              f"{last} steps", fill="black")
    draw.text((pad, height - pad + 8), "0", fill="black")
    draw.text((width - pad - 20, height - pad + 8), str(last), fill="black")
    image.save(path)
