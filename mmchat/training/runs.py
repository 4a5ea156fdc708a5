"""Training runs: one folder each, trained by a subprocess, followed through the files it writes.

A run is `runs/<id>/` under the data dir:

- `run.json`: what to train (the training config, the base preset, the system prompt chat
  sends, the store to publish into, the names already taken; a visual run's targets under
  "visual") — what `python -m mmchat.train --run FOLDER` reads;
- `train.jsonl`, `eval.jsonl`: the examples, already validated and split by the server;
- `log.jsonl`: one JSON object per event the trainer reports (step, eval, sample,
  checkpoint, evaluation progress, end), appended and flushed as they happen, so a page
  reload, a second browser or an app restart redraws the whole curve from step 1;
- `status.json`: the trainer's state (`starting`, `running`, `evaluating`, `done`,
  `stopped`, `failed`), its pid, the result; replaced atomically;
- `checkpoints/step-N/` (`mmchat.training.checkpoint`) and `trainer.log` (its output).

`RunFiles` reads and writes those files (both sides use it). `RunManager` is the server's
side: it starts one trainer at a time (`python -m mmchat.train --run FOLDER` at lower
priority with a thread count that leaves the server a core), stops it (SIGTERM: the trainer
checkpoints and exits; SIGKILL after `STOP_GRACE_S`), resumes it from its last checkpoint,
optionally publishes what a stopped run learnt ("keep"), lists and deletes runs, and tells a
run whose trainer died without saying so: `failed` with its last output lines when this
server started it, `interrupted` (resumable) when the server itself restarted meanwhile.
It imports no torch and never trains in the server's process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmchat.errors import UserFacingError
from mmchat.files import process_alive
from mmchat.training.examples import Example

RUN_FILE, LOG_FILE, STATUS_FILE, OUTPUT_FILE = "run.json", "log.jsonl", "status.json", "trainer.log"
TRAIN_FILE, EVAL_FILE, CHECKPOINTS = "train.jsonl", "eval.jsonl", "checkpoints"
LIVE = ("starting", "running", "evaluating")
ENDED = ("done", "stopped", "failed", "interrupted")
STOP_GRACE_S = 4.5  # SIGTERM, then SIGKILL: the goal is "stopped within 5 s"
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[a-z0-9_-]{1,48}")


def write_examples(path: Path, examples: Iterable[Example]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")


def read_examples(path: Path) -> list[Example]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [Example.from_json(json.loads(line)) for line in lines if line.strip()]


def _pid_alive(pid: int, folder: Path) -> bool:
    """The trainer of `folder` still runs (a reused pid running something else does not count)."""
    if not process_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return True  # no /proc here: the pid is alive, trust it
    return "mmchat.train" in cmdline and str(folder) in cmdline


class RunFiles:
    """One run's folder: read and write its status and log (the trainer and the server both use it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.id = self.folder.name
        self._log_lock = threading.Lock()

    # --- writing (the trainer) ---
    def write_status(self, **fields: Any) -> dict[str, Any]:
        status = {**self.read_status(), **fields, "updated": time.time()}
        tmp = self.folder / f".{STATUS_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(status, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.folder / STATUS_FILE)
        return status

    def log(self, event: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False)
        with self._log_lock, (self.folder / LOG_FILE).open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()

    # --- reading (the server) ---
    def read_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def read_status(self) -> dict[str, Any]:
        return self.read_json(STATUS_FILE)

    def spec(self) -> dict[str, Any]:
        return self.read_json(RUN_FILE)

    def events(self) -> list[dict[str, Any]]:
        """Every event logged so far (a half-written last line is skipped)."""
        try:
            text = (self.folder / LOG_FILE).read_text(encoding="utf-8")
        except OSError:
            return []
        events = []
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def output_tail(self, lines: int = 12) -> str:
        try:
            text = (self.folder / OUTPUT_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def checkpoint_step(self) -> int:
        from mmchat.training.checkpoint import PREFIX, STATE_FILE

        root = self.folder / CHECKPOINTS
        steps = [int(p.name.removeprefix(PREFIX)) for p in root.glob(f"{PREFIX}*")
                 if (p / STATE_FILE).is_file() and p.name.removeprefix(PREFIX).isdigit()] if root.is_dir() else []
        return max(steps, default=0)

    def summary(self, state: str | None = None) -> dict[str, Any]:
        """The JSON `/finetune_status` returns: state, step, series, ETA, samples, metrics, error."""
        status = self.read_status()
        spec = self.spec()
        events = self.events()
        steps = [e for e in events if e.get("type") == "step"]
        loss = {int(e["step"]): e["loss"] for e in steps}  # a resumed run logs its steps again: keep the last
        evals = {int(e["step"]): e["eval_loss"] for e in events if e.get("type") == "eval"}
        samples = [e for e in events if e.get("type") == "sample"]
        total = int(status.get("total_steps") or (steps[-1]["total"] if steps else 0))
        step = max(loss, default=0)
        recent = [e["seconds"] for e in steps[-10:] if isinstance(e.get("seconds"), (int, float))]
        step_s = statistics.median(recent) if recent else None
        state = state or status.get("state", "starting")
        tail = self.output_tail() if state in ("failed", "interrupted") else ""
        return {
            "id": self.id,
            "name": spec.get("training", {}).get("name", ""),
            "state": state,
            "phase": status.get("phase", ""),
            "step": step,
            "total_steps": total,
            "loss": [[s, loss[s]] for s in sorted(loss)],
            "eval_loss": [[s, evals[s]] for s in sorted(evals)],
            "eta_s": round(step_s * (total - step), 1) if step_s is not None and state in LIVE else None,
            "step_s": round(step_s, 3) if step_s is not None else None,
            "tokens_per_s": steps[-1].get("tokens_per_s") if steps else None,
            "rss_mib": steps[-1].get("rss_mib") if steps else None,
            "samples": samples[-1]["samples"] if samples else [],
            "samples_step": samples[-1]["step"] if samples else None,
            "evaluation": status.get("evaluation"),
            "metrics": status.get("metrics") or {},
            "gallery": status.get("gallery") or [],
            "adapter": status.get("adapter", ""),
            "error": status.get("error", ""),
            "log_tail": tail,
            "checkpoint_step": self.checkpoint_step(),
            "resumable": state in ("stopped", "interrupted", "failed") and not status.get("adapter"),
            "created": spec.get("created", 0),
            "dataset": spec.get("dataset", {}),
            "visual": spec.get("visual"),  # a visual run's targets (None: a text run)
        }


class RunManager:
    """The server's side of training runs (see the module docstring). One run trains at a time."""

    def __init__(self, root: Path, *, threads: int = 0, python: str | None = None, cwd: Path | None = None) -> None:
        from mmchat.config import PROJECT_DIR

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.python = python or sys.executable
        self.cwd = Path(cwd or PROJECT_DIR)
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # --- reading ---
    def files(self, run_id: str) -> RunFiles:
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or not (self.root / run_id).is_dir():
            known = ", ".join(self.run_ids()[:5]) or "none"
            raise UserFacingError(f"no training run {run_id!r}; runs: {known}")
        return RunFiles(self.root / run_id)

    def run_ids(self) -> list[str]:
        """Every run, newest first."""
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and RUN_ID.fullmatch(p.name)), reverse=True)

    def state(self, run_id: str) -> str:
        """The run's state, telling apart a trainer that died (failed / interrupted) from one that runs."""
        files = self.files(run_id)
        status = files.read_status()
        state = status.get("state", "starting")
        if state not in LIVE:
            return state
        process = self._processes.get(run_id)
        if process is not None:
            if process.poll() is None:
                return state
            status = files.read_status()  # it may have written its end just now
            if status.get("state") not in LIVE:
                return status["state"]
            code = process.returncode
            files.write_status(state="failed", error=f"the trainer ended without finishing (exit status {code}"
                               f"{', killed by signal ' + str(-code) if code and code < 0 else ''}); nothing was "
                               "published. Its last output is below.")
            return "failed"
        if _pid_alive(int(status.get("pid") or 0), files.folder):
            return state  # a trainer started by an earlier server process, still going
        files.write_status(state="interrupted", error="the app stopped while this run was training; resume it to "
                           "continue from its last checkpoint")
        return "interrupted"

    def status(self, run_id: str) -> dict[str, Any]:
        return self.files(run_id).summary(self.state(run_id))

    def runs(self) -> list[dict[str, Any]]:
        return [self.status(run_id) for run_id in self.run_ids()]

    def active(self) -> str | None:
        """The run that is training now, if any."""
        for run_id in self.run_ids():
            if self.state(run_id) in LIVE:
                return run_id
        return None

    # --- acting ---
    def _refuse_if_busy(self) -> None:
        running = self.active()
        if running is not None:
            summary = self.files(running).summary()
            raise UserFacingError(
                f"a training run is already going: {running} (adapter {summary['name']!r}, step "
                f"{summary['step']}/{summary['total_steps'] or '?'}); one run trains at a time — stop it or wait")

    def start(self, spec: dict[str, Any], train: Sequence[Example], held_out: Sequence[Example] = (),
              images: Iterable[Path] = ()) -> str:
        """Create a run folder (examples, spec; `images` copied into it) and start its trainer."""
        with self._lock:
            self._refuse_if_busy()
            name = str(spec.get("training", {}).get("name", "run"))
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
            folder = self.root / run_id
            if folder.exists():
                raise UserFacingError(f"a run named {run_id} was started this second; try again")
            try:
                folder.mkdir(parents=True)
                train, held_out = self._copy_images(folder, list(train), list(held_out), images)
                write_examples(folder / TRAIN_FILE, train)
                write_examples(folder / EVAL_FILE, held_out)
                (folder / RUN_FILE).write_text(json.dumps({**spec, "created": time.time()}, ensure_ascii=False,
                                                          indent=1), encoding="utf-8")
                RunFiles(folder).write_status(state="starting", phase="starting the trainer")
            except OSError as err:
                shutil.rmtree(folder, ignore_errors=True)
                raise UserFacingError(f"could not create the run folder in {self.root}: {err.strerror or err}") from None
            self._spawn(run_id)
            return run_id

    @staticmethod
    def _copy_images(folder: Path, train: list[Example], held_out: list[Example],
                     images: Iterable[Path]) -> tuple[list[Example], list[Example]]:
        """Images the examples name, copied into the run folder (so deleting the run removes them)."""
        import dataclasses

        wanted = {str(p) for p in images} | {p for e in train + held_out for p in getattr(e, "images", ())}
        if not wanted:
            return train, held_out
        (folder / "images").mkdir()
        moved = {}
        for path in sorted(wanted):
            target = folder / "images" / Path(path).name
            shutil.copyfile(path, target)
            moved[path] = str(target)

        def move(example: Example) -> Example:
            paths = getattr(example, "images", ())
            return dataclasses.replace(example, images=tuple(moved.get(p, p) for p in paths)) if paths else example

        return [move(e) for e in train], [move(e) for e in held_out]

    def _spawn(self, run_id: str, *, stop_at: int = 0) -> None:
        folder = self.root / run_id
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        command = [self.python, "-m", "mmchat.train", "--run", str(folder), "--threads", str(self.threads)]
        if stop_at:
            command += ["--stop-at", str(stop_at)]
        files = RunFiles(folder)
        files.write_status(state="starting", phase="starting the trainer", error="", pid=0)
        with (folder / OUTPUT_FILE).open("ab") as output:
            process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self._processes[run_id] = process
        files.write_status(pid=process.pid)

    def stop(self, run_id: str, keep: bool = False, grace_s: float = STOP_GRACE_S) -> dict[str, Any]:
        """Stop a run within `grace_s` (+ a moment); with `keep`, publish what it learnt up to its checkpoint."""
        files = self.files(run_id)
        if self.state(run_id) not in LIVE:
            raise UserFacingError(f"run {run_id} is not training (it is {self.state(run_id)})")
        pid = int(files.read_status().get("pid") or 0)
        process = self._processes.get(run_id)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)  # the trainer checkpoints at the end of its step and exits
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._alive(run_id, pid, process):
            time.sleep(0.1)
        if self._alive(run_id, pid, process):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if process is not None:
                process.wait(timeout=5)
        if files.read_status().get("state") in LIVE:
            files.write_status(state="stopped", phase="", error="")
        files.log({"type": "stopped", "step": files.summary()["step"], "keep": keep})
        if keep:
            step = files.checkpoint_step()
            if not step:
                raise UserFacingError(f"run {run_id} stopped before its first step ended: nothing to keep")
            self._spawn(run_id, stop_at=step)  # trains no further: evaluates and publishes that checkpoint
        return self.status(run_id)

    def _alive(self, run_id: str, pid: int, process: subprocess.Popen | None) -> bool:
        if process is not None:
            return process.poll() is None
        return _pid_alive(pid, self.root / run_id)

    def resume(self, run_id: str) -> dict[str, Any]:
        """Continue a stopped, failed or interrupted run from its last checkpoint (or from the start)."""
        with self._lock:
            state = self.state(run_id)
            if state in LIVE:
                raise UserFacingError(f"run {run_id} is already training")
            if state == "done":
                raise UserFacingError(f"run {run_id} has finished; its adapter is {self.files(run_id).read_status().get('adapter')!r}")
            self._refuse_if_busy()
            self.files(run_id).log({"type": "resumed", "from_step": self.files(run_id).checkpoint_step()})
            self._spawn(run_id)
        return self.status(run_id)

    def delete(self, run_id: str) -> None:
        """Remove a run's folder (a training run is stopped first)."""
        if self.state(run_id) in LIVE:
            self.stop(run_id)
        self._processes.pop(run_id, None)
        shutil.rmtree(self.root / run_id)

    def shutdown(self) -> None:
        """Stop every trainer this server started (at exit)."""
        for run_id, process in list(self._processes.items()):
            if process.poll() is None:
                process.terminate()


__all__ = ["RunFiles", "RunManager", "read_examples", "write_examples"]
