"""Training runs: checkpoints that resume to the same weights, and the trainer in its own process.

Real parts: the tiny random LLaVA built from configs, real peft LoRA training through the
engine's loop, real safetensors checkpoints, a real `python -m mmchat.train --run` subprocess
followed through its files, real signals (SIGTERM to stop, SIGKILL to crash it).
Nothing is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mmchat.adapters.store import AdapterStore  # noqa: E402
from mmchat.config import PRESETS  # noqa: E402
from mmchat.errors import UserFacingError  # noqa: E402
from mmchat.training.config import TrainingConfig  # noqa: E402
from mmchat.training.examples import Example  # noqa: E402
from mmchat.training.runs import RunFiles, RunManager, read_examples, write_examples  # noqa: E402

TINY = PRESETS["tiny"]
EXAMPLES = [Example(f"Question number {i}?", f"Answer {i}.") for i in range(12)]


def config(**values) -> TrainingConfig:
    fields = dict(name="run-test", description="a run test", rank=4, alpha=8, learning_rate=1e-2, max_steps=8,
                  batch_size=2, seed=3, dropout=0.05, warmup_steps=2)
    fields.update(values)
    return TrainingConfig(**fields)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_stopped_run_resumed_from_its_checkpoint_ends_with_the_uninterrupted_weights(tmp_path, model_cache_dir):
    """Dropout on, warm-up, AdamW state, data order: all must come back for the weights to match."""
    import torch

    from mmchat.training.engine import TrainingStopped, train_adapter

    whole = train_adapter(config(), EXAMPLES, AdapterStore(tmp_path / "a"), preset=TINY, cache_dir=model_cache_dir)

    stop = threading.Event()
    events: list[dict] = []

    def on_event(event):
        events.append(event)
        if event["type"] == "step" and event["step"] == 3:
            stop.set()  # as SIGTERM does in the trainer process

    checkpoints = tmp_path / "checkpoints"
    store = AdapterStore(tmp_path / "b")
    with pytest.raises(TrainingStopped, match="stopped at step 3 of 8; resume continues from there"):
        train_adapter(config(), EXAMPLES, store, preset=TINY, cache_dir=model_cache_dir, stop=stop,
                      checkpoints=checkpoints, on_event=on_event)
    assert [p.name for p in checkpoints.iterdir()] == ["step-3"] and store.scan() == ([], [])
    assert not list(checkpoints.rglob("*.bin")) and not list(checkpoints.rglob("*.pt"))  # no pickle
    resumed_steps: list[int] = []
    resumed = train_adapter(config(), EXAMPLES, store, preset=TINY, cache_dir=model_cache_dir,
                            checkpoints=checkpoints, progress=lambda s, t, loss: resumed_steps.append(s))
    assert resumed_steps == [4, 5, 6, 7, 8]
    first, second = _weights(whole.folder), _weights(resumed.folder)
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)
    assert resumed.card.metrics["training"]["final_loss"] == whole.card.metrics["training"]["final_loss"]


def test_examples_survive_the_run_files_unchanged(tmp_path):
    example = Example("q?", "a.", (("tabby cat", 0.5),), kind="photo", expected="cat",
                      turns=(("user", "q?"), ("assistant", "a.")), images=("/x/1.png",))
    write_examples(tmp_path / "train.jsonl", [example])
    assert read_examples(tmp_path / "train.jsonl") == [example]


def _manager(tmp_path: Path) -> RunManager:
    return RunManager(tmp_path / "runs", threads=1)


def _spec(tmp_path: Path, cache_dir: Path, **training) -> dict:
    return {"training": config(**training).to_dict(), "preset": "tiny", "cache_dir": str(cache_dir),
            "store": str(tmp_path / "user-adapters"), "reserved": ["one-word"], "system_prompt": "Be brief.",
            "dataset": {"source": "test"}}


def _wait(manager: RunManager, run_id: str, states: tuple[str, ...], timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = manager.status(run_id)
        if status["state"] in states:
            return status
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not reach {states}: {manager.status(run_id)}\n"
                         f"{RunFiles(manager.root / run_id).output_tail(40)}")


@pytest.mark.slow
def test_a_run_in_its_own_process_logs_every_step_publishes_and_refuses_a_second(tmp_path, model_cache_dir):
    manager = _manager(tmp_path)
    run_id = manager.start(_spec(tmp_path, model_cache_dir, max_steps=6, learning_rate=0.05), EXAMPLES)
    with pytest.raises(UserFacingError, match=f"a training run is already going: {run_id} .*one run trains at a time"):
        manager.start(_spec(tmp_path, model_cache_dir, name="second"), EXAMPLES)
    status = _wait(manager, run_id, ("done", "failed"))
    assert status["state"] == "done", status
    assert [s for s, _ in status["loss"]] == [1, 2, 3, 4, 5, 6] and status["total_steps"] == 6
    assert status["adapter"] == "run-test" and status["checkpoint_step"] == 0  # published, checkpoints gone
    assert [a.name for a in AdapterStore(tmp_path / "user-adapters").scan()[0]] == ["run-test"]
    # A second server process (a restart) reads the same run, curve and all.
    again = RunManager(tmp_path / "runs").status(run_id)
    assert again["state"] == "done" and again["loss"] == status["loss"]


@pytest.mark.slow
def test_stop_within_seconds_then_resume_to_the_end_and_a_killed_trainer_fails_cleanly(tmp_path, model_cache_dir,
                                                                                      tiny_backend):
    manager = _manager(tmp_path)
    spec = _spec(tmp_path, model_cache_dir, max_steps=400, checkpoint_every=1000, batch_size=4)
    run_id = manager.start(spec, EXAMPLES)
    deadline = time.monotonic() + 120
    while manager.status(run_id)["step"] < 2:
        assert time.monotonic() < deadline, manager.status(run_id)
        time.sleep(0.2)
    started = time.monotonic()
    status = manager.stop(run_id)
    assert time.monotonic() - started < 5.5
    assert status["state"] == "stopped" and status["resumable"] and status["checkpoint_step"] >= 2
    stopped_at = status["checkpoint_step"]
    assert AdapterStore(tmp_path / "user-adapters").scan() == ([], [])  # nothing published

    manager.resume(run_id)
    deadline = time.monotonic() + 120
    while manager.status(run_id)["step"] <= stopped_at + 1:
        assert time.monotonic() < deadline, manager.status(run_id)
        time.sleep(0.2)
    steps = [s for s, _ in manager.status(run_id)["loss"]]
    assert steps == list(range(1, len(steps) + 1))  # one curve from step 1, continued
    pid = RunFiles(manager.root / run_id).read_status()["pid"]
    os.kill(pid, signal.SIGKILL)  # a crash
    status = _wait(manager, run_id, ("failed",), timeout=30)
    assert "killed by signal 9" in status["error"] and status["resumable"]
    assert AdapterStore(tmp_path / "user-adapters").scan() == ([], [])
    # the server goes on: chat on a backend in this process still answers
    from mmchat.backends.base import GenerationParams

    prompt = tiny_backend.prepare([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], [])
    assert list(tiny_backend.stream(prompt, GenerationParams(max_new_tokens=3, temperature=0.0)))
    manager.delete(run_id)
    assert not (manager.root / run_id).exists()


def test_a_run_from_an_earlier_server_whose_trainer_is_gone_reads_interrupted(tmp_path):
    manager = _manager(tmp_path)
    folder = manager.root / "20261203-101010-ghost"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"training": {"name": "ghost"}}))
    RunFiles(folder).write_status(state="running", pid=2**22 + 12345)
    RunFiles(folder).log({"type": "step", "step": 1, "total": 4, "loss": 2.0, "seconds": 0.5})
    status = manager.status("20261203-101010-ghost")
    assert status["state"] == "interrupted" and status["resumable"] and status["loss"] == [[1, 2.0]]
    assert manager.active() is None
    with pytest.raises(UserFacingError, match="no training run '../etc'"):
        manager.status("../etc")


def test_a_checkpoint_that_cannot_be_written_fails_the_run_with_that_reason(tmp_path, model_cache_dir):
    """A full disk or a read-only folder while checkpointing (here: the folder is a file): the run
    ends with the reason and the folder, nothing is published."""
    from mmchat.training.engine import train_adapter

    blocked = tmp_path / "checkpoints"
    blocked.write_text("not a folder")
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(UserFacingError, match=f"could not write the checkpoint at step 2 into {blocked}"):
        train_adapter(config(checkpoint_every=2), EXAMPLES, store, preset=TINY, cache_dir=model_cache_dir,
                      checkpoints=blocked)
    assert store.scan() == ([], [])


def test_stop_in_the_middle_of_a_step_ends_it_at_once_and_resume_still_matches(tmp_path, model_cache_dir):
    """Stop cuts the step in progress short (at the next decoder layer), keeps the previous
    step's checkpoint (with the random state from before the cut step), and a resume from it
    ends with the uninterrupted weights."""
    import torch

    from mmchat.backends.registry import load_base_copy
    from mmchat.training.engine import TrainingStopped, prepare_model, run_loop
    from mmchat.training.examples import Renderer

    cfg = config(max_steps=6)

    def fresh():
        model, processor = load_base_copy(TINY, model_cache_dir)
        renderer = Renderer(TINY.kind, processor, "Be brief.", cfg.max_length)
        encoded = [renderer.encode(e) for e in EXAMPLES]
        return prepare_model(model, TINY.kind, cfg), encoded, renderer.eos_id

    def trainable(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model, encoded, pad = fresh()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        run_loop(model, encoded, cfg, pad)
    whole = trainable(model)

    model, encoded, pad = fresh()
    stop, armed = threading.Event(), threading.Event()

    def cut(module, args):  # registered before the engine's hooks: it runs first
        if armed.is_set():
            stop.set()

    # The last decoder layer: the first one's LoRA dropout has drawn random numbers by then.
    layer = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")][-1]
    handle = layer.register_forward_pre_hook(cut)
    checkpoints = tmp_path / "checkpoints"

    def on_event(event):
        if event["type"] == "step" and event["step"] == 3:
            armed.set()

    with torch.random.fork_rng(devices=[]), pytest.raises(TrainingStopped, match="stopped at step 3 of 6"):
        torch.manual_seed(cfg.seed)
        run_loop(model, encoded, cfg, pad, stop=stop, checkpoints=checkpoints, on_event=on_event)
    handle.remove()
    assert [p.name for p in checkpoints.iterdir()] == ["step-3"]

    model, encoded, pad = fresh()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        losses = run_loop(model, encoded, cfg, pad, checkpoints=checkpoints)
    assert len(losses) == 6
    resumed = trainable(model)
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)


def test_a_run_ended_early_by_stop_at_checkpoints_there_and_continues_to_the_same_weights(tmp_path, model_cache_dir):
    """What `python -m bench finetune --visual` does to evaluate along the way: train to step 3,
    evaluate, continue to 6 — the same weights as six steps in one go."""
    import torch

    from mmchat.backends.registry import load_base_copy
    from mmchat.training.engine import prepare_model, run_loop
    from mmchat.training.examples import Renderer

    cfg = config(max_steps=6, checkpoint_every=3)

    def fresh():
        model, processor = load_base_copy(TINY, model_cache_dir)
        renderer = Renderer(TINY.kind, processor, "Be brief.", cfg.max_length)
        return prepare_model(model, TINY.kind, cfg), [renderer.encode(e) for e in EXAMPLES], renderer.eos_id

    def trained(model, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return run_loop(model, encoded, cfg, pad, **kwargs)

    model, encoded, pad = fresh()
    trained(model)
    whole = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model, encoded, pad = fresh()
    assert len(trained(model, checkpoints=tmp_path / "c", stop_at=3)) == 3
    assert len(trained(model, checkpoints=tmp_path / "c")) == 6
    assert all(torch.allclose(whole[n], p, atol=1e-6) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.slow
def test_a_visual_run_stopped_and_resumed_ends_done_with_per_skill_metrics_and_a_projector(tmp_path, model_cache_dir):
    """The offline model learns to see in the trainer process: a shapes run (projector + LoRA)
    stopped after its checkpoint, resumed to the end, evaluated per skill (base through the
    label pathway, adapter through the projector) and published as a visual adapter."""
    from mmchat.training import shapes

    pictures = tmp_path / "pictures"
    train = shapes.generate(24, seed=0, caption_ratio=(0, 1), out_dir=pictures)
    held_out = shapes.generate(8, seed=0, caption_ratio=(0, 1), held_out=True, out_dir=pictures)
    manager = _manager(tmp_path)
    spec = {**_spec(tmp_path, model_cache_dir, name="sees-shapes", max_steps=6, batch_size=4, checkpoint_every=2,
                    learning_rate=1e-3, rank=16, alpha=32, target_modules=("q_proj", "v_proj"), dropout=0.0,
                    warmup_steps=0),
            "preset": "offline", "visual": {"lora": True, "projector": True, "projector_learning_rate": 3e-3}}
    run_id = manager.start(spec, train, held_out)
    deadline = time.monotonic() + 180
    while manager.status(run_id)["checkpoint_step"] < 2:
        assert manager.status(run_id)["state"] in ("starting", "running"), manager.status(run_id)
        assert time.monotonic() < deadline, manager.status(run_id)
        time.sleep(0.2)
    status = manager.stop(run_id)
    assert status["state"] == "stopped" and status["resumable"] and status["checkpoint_step"] >= 2, status
    assert AdapterStore(tmp_path / "user-adapters").scan() == ([], [])

    manager.resume(run_id)
    status = _wait(manager, run_id, ("done", "failed", "stopped"))
    assert status["state"] == "done", status
    assert [s for s, _ in status["loss"]] == [1, 2, 3, 4, 5, 6] and status["visual"]["projector"] is True
    (stored,), _ = AdapterStore(tmp_path / "user-adapters").scan()
    assert stored.name == "sees-shapes" and (stored.folder / "projector.safetensors").is_file()
    assert stored.card.projector["tokens_per_image"] == 11  # FeatureSpec(): a 3 x 3 grid, pooled, colour
    metrics = stored.card.metrics
    kinds = {e.kind for e in held_out}
    for side in ("base", "adapter"):
        assert set(metrics[side]) == {"exact_match"} | {f"exact_match_{k}" for k in kinds}, metrics[side]
        assert all(0.0 <= v <= 1.0 for v in metrics[side].values())
    assert metrics["training"]["steps"] == 6 and metrics["training"]["targets_label"] == "projector + LoRA"
    assert metrics["held_out"]["count"] == 8 and status["metrics"] == metrics
    gallery = status["gallery"]
    assert [row["prompt"] for row in gallery] == [e.question for e in held_out]
    assert all(Path(row["image"]).is_file() and row["image"].startswith(str(manager.root / run_id))
               for row in gallery)
    assert [row["expected"] for row in gallery] == [e.expected for e in held_out]
    assert all(isinstance(row["base"], str) and isinstance(row["adapter"], str) for row in gallery)
    events = RunFiles(manager.root / run_id).events()
    assert [e["done"] for e in events if e["type"] == "evaluation"][-1] == 16  # both sides, every question
