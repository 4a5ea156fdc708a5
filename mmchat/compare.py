"""The Compare engine: one prompt answered by 2–4 columns (the bare base and adapters).

`compare(backend, text, image, adapters, params)` builds the chat messages for one user turn
(text plus an optional photo) with `mmchat.prompt`'s helpers, checks the columns (2–4
distinct names among "base" and the backend's loaded adapters) and yields snapshots of every
column as they stream: text so far, `GenerationStats` (prompt/output tokens, time to first
token, tokens/s, finish reason) and whether the column is done. Every column uses the same
`params` (the caller passes greedy by default) and the same turn.

Batched, not one after another. The base and plain-LoRA columns run as ONE `model.generate`
call with peft's mixed-adapter batch (`adapter_names=["__base__", "a", "b"]`, one row per
column) on one prepared prompt: every row holds the
same prompt, so no padding is needed; a streamer splits each step's tokens into the columns,
and a row that ends early (its end-of-sequence token) stops growing while the others go on. The
AdapterHost lock is held for the whole generation (`AdapterHost.activate_batch`), so no other
answer runs on the model meanwhile. Why: it is the faster of the two on the offline model
(SmolLM2-135M, fp32, 2 CPU cores). `python -m bench adapters` measured base + 2 adapters (32
tokens each) batched in 3.64 s vs 4.47 s asked one after another: 0.81× the wall time (best of
3, two torch threads, load average ~1; 0.70× with one torch thread). It misses the
issue's 0.6× goal because of the CPU, not the batching: in the same run the plain model without
adapters computes 3 rows per step in 0.64× the time of 3 one-row steps (a 3-row matrix product
costs about twice a one-row one here), and peft's mixed-batch LoRA adds a few percent on top.
In fp32 greedy the rows equal the answers asked alone (tests/test_compare.py). Batching also
shows every column from the first token on, where one after another the last column waits for
the others. The price: a column that ends early still waits for the batch's longest answer
before the comparison is done, and the columns share one time to first token.

Visual adapters (a projector: their prompt is embeddings, with the image's vectors spliced
in, not the ids every batched row shares) are not batched: each such column is asked on its
own, through the backend's own `prepare(..., adapter=name)` and `stream`, exactly as chat asks
it, after the batched columns (the model's lock lets one generation run at a time anyway).
Until its turn comes, its column shows empty and not done; its prompt tokens and time to first
token are its own. A comparison of base vs a visual adapter on an image therefore takes about
as long as asking both in turn.

Setting `stop` (or abandoning the iterator) ends the generation at the next token (the prompt,
one turn, is prefilled in one go for batched columns; in chunks for a visual one); columns
still running or not started are then "cancelled". Backends that take no adapters are refused
(only "base" would exist there). It renders nothing (that is `mmchat.ui.compare`) and keeps
no history.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from mmchat.backends.base import Backend, GenerationParams, GenerationStats
from mmchat.errors import UserFacingError

MIN_COLUMNS, MAX_COLUMNS = 2, 4
IMAGE_ID = "compare-image"  # the one image's id in the rendered turn (never shown)

# One long-lived worker per concurrent comparison: torch's intra-op thread team is set up per
# calling thread, and a fresh thread per comparison would pay for that again.
_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mmchat-compare")


@dataclass
class Column:
    adapter: str  # "base" or an adapter name
    text: str  # answer so far
    stats: GenerationStats  # prompt/output tokens, time_to_first_token_s, tokens_per_s, finish_reason
    done: bool


def column_names(backend: Backend, adapters: Sequence[str]) -> list[str]:
    """The columns asked for, checked: 2–4 distinct names among "base" and the loaded adapters."""
    from mmchat.adapters.host import BASE, adapter_name

    if not backend.info.supports_adapters:
        raise UserFacingError(
            f"the {backend.info.preset} model takes no LoRA adapters, so only {BASE!r} can answer and there is "
            "nothing to compare; use a preset that takes adapters (e.g. offline)"
        )
    choices = ", ".join([BASE, *backend.adapters.names])
    names = [BASE if adapter_name(name) is None else str(name) for name in adapters]
    if not MIN_COLUMNS <= len(names) <= MAX_COLUMNS:
        raise UserFacingError(
            f"choose {MIN_COLUMNS} to {MAX_COLUMNS} columns to compare (got {len(names)}); choices: {choices}"
        )
    for index, name in enumerate(names):
        if name in names[:index]:
            raise UserFacingError(f"column {name!r} is chosen twice; choose distinct columns among: {choices}")
        backend.adapters.check(name)  # names the loaded ones if it is not among them
    return names


def is_visual(backend: Backend, name: str) -> bool:
    """True for a visual adapter (it carries a projector: its prompt is embeddings, not ids)."""
    return getattr(backend.adapters, "projector", lambda _: None)(name) is not None


def compare(
    backend: Backend,
    text: str,
    image: Any | None,
    adapters: Sequence[str],
    params: GenerationParams,
    system_prompt: str = "",
    stop: threading.Event | None = None,
) -> Iterator[list[Column]]:
    """Answer `text` (and `image`, a PIL image, if given) with each column in `adapters`.

    Yields a list of `Column`s, one per name in the order given, first before anything is
    generated and then as the answers grow; the last snapshot has every column done. Errors
    the user can fix (columns, an empty or too long prompt) raise `UserFacingError` before
    anything is generated.
    """
    from mmchat.language import instruction
    from mmchat.prompt import Turn, fit_to_context, with_instruction

    names = column_names(backend, adapters)
    if not (text or "").strip():
        raise UserFacingError("type a prompt to compare the columns on")
    # As in chat: a model that writes several languages is asked to answer in the prompt's.
    system_prompt = with_instruction(system_prompt, instruction(text, backend.info.languages))
    images = [image] if image is not None else []
    turn = Turn("user", text, (IMAGE_ID,) if images else ())

    def prepared_for(adapter: str | None) -> Any:
        prepared: list[Any] = []

        def count_tokens(messages: list, image_ids: list[str]) -> int:
            prepared[:] = [backend.prepare(messages, images, adapter=adapter)]
            return prepared[0].prompt_tokens

        # One turn, so nothing can be dropped: this only says by how much a prompt is too long.
        fit_to_context(system_prompt, [turn], count_tokens, backend.info.context_length, params.max_new_tokens)
        return prepared[0]

    stop = stop or threading.Event()
    visual = [name for name in names if is_visual(backend, name)]
    batched = [name for name in names if name not in visual]
    runs: list[Any] = []
    if batched:
        shared = prepared_for(None)  # the plain columns' rows all read this one prompt of ids
        runs.append(_BatchedRun(backend, shared.inputs, shared.prompt_tokens, batched, params, stop))
    runs += [_StreamRun(backend, prepared_for(name), name, params, stop) for name in visual]
    yield from _in_turn(names, runs)


def _in_turn(names: list[str], runs: list[Any]) -> Iterator[list[Column]]:
    """The runs one after another (they take the model's lock in turn anyway), every snapshot
    with all the columns in `names` order; a run not started yet shows its columns empty."""
    latest = {column.adapter: column for run in runs for column in run.waiting()}
    current: Any = None
    try:
        for run in runs:
            current = run.run()
            for shot in current:
                latest.update((column.adapter, column) for column in shot)
                yield [latest[name] for name in names]
            current = None
    finally:
        if current is not None:  # abandoned mid-run: let that run stop its generation
            current.close()


def _tokenizer(backend: Backend) -> Any:
    tokenizer = getattr(backend, "tokenizer", None)
    return tokenizer if tokenizer is not None else backend.processor.tokenizer


class _BatchedRun:
    """One `generate` over all columns; the worker thread publishes snapshots to a queue."""

    _END = object()

    def __init__(self, backend: Backend, inputs: dict[str, Any], prompt_tokens: int, names: list[str],
                 params: GenerationParams, stop: threading.Event | None) -> None:
        self.backend = backend
        self.inputs = inputs
        self.names = names
        self.params = params
        self.stop = stop or threading.Event()
        self.columns = [Column(name, "", GenerationStats(prompt_tokens=prompt_tokens), False) for name in names]
        self.updates: queue.Queue = queue.Queue()
        self.error: BaseException | None = None

    def waiting(self) -> list[Column]:
        """The columns before the run starts (empty, not done)."""
        return [Column(c.adapter, "", GenerationStats(prompt_tokens=c.stats.prompt_tokens), False)
                for c in self.columns]

    def snapshot(self) -> list[Column]:
        now = time.perf_counter()
        shot = []
        for column in self.columns:
            stats = dataclasses.replace(column.stats)
            if not column.done:
                stats.total_s = now - stats.started_at
            shot.append(Column(column.adapter, column.text, stats, column.done))
        return shot

    def run(self) -> Iterator[list[Column]]:
        started = time.perf_counter()
        for column in self.columns:
            column.stats.started_at = started
        yield self.snapshot()
        future = _WORKERS.submit(self._generate)
        ended = False
        try:
            while not ended:
                latest = self.updates.get()
                while True:  # a slow reader gets the newest snapshot, not a backlog
                    if latest is self._END:
                        ended = True
                        break
                    try:
                        following = self.updates.get_nowait()
                    except queue.Empty:
                        break
                    if following is self._END:
                        ended = True
                        break
                    latest = following
                if ended:
                    break
                yield latest
        finally:
            if not ended:  # abandoned: the worker must not keep generating for nobody
                self.stop.set()
            future.result()  # _generate never raises; this waits for generate() to return
        if self.error is not None:
            raise self.error
        yield self.snapshot()

    def _generate(self) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from mmchat.backends.streaming import StopOnEvent, answer_only_repetition_control

        tokenizer = _tokenizer(self.backend)
        rows = len(self.names)
        streamer = None
        try:
            batch = {
                key: value.repeat(rows, *([1] * (value.dim() - 1))) if torch.is_tensor(value) else value
                for key, value in self.inputs.items()
            }
            kwargs = self.params.generate_kwargs()
            prompt_length = int(batch["input_ids"].shape[-1])
            processors = answer_only_repetition_control(kwargs, prompt_length)
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            with torch.inference_mode(), self.backend.adapters.activate_batch(self.names) as (model, adapter_names):
                eos = model.generation_config.eos_token_id
                eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
                streamer = _ColumnStreamer(self, tokenizer, eos_ids)
                extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
                if not self.stop.is_set():
                    model.generate(
                        **batch, **kwargs, **extra,
                        logits_processor=LogitsProcessorList(processors),
                        stopping_criteria=StoppingCriteriaList([StopOnEvent(self.stop)]),
                        streamer=streamer, pad_token_id=pad_id,
                    )
        except BaseException as err:  # surfaced to the consumer in run()
            self.error = err
        finally:
            self._finish(streamer)
            self.updates.put(self._END)

    def _finish(self, streamer: "_ColumnStreamer | None") -> None:
        now = time.perf_counter()
        for row, column in enumerate(self.columns):
            if column.done:
                continue
            if streamer is not None:
                streamer.flush(row)
            stats = column.stats
            stats.total_s = now - stats.started_at
            if self.error is not None:
                stats.finish_reason = "error"
            elif self.stop.is_set():
                stats.finish_reason = "cancelled"
            elif stats.output_tokens >= self.params.max_new_tokens:
                stats.finish_reason = "length"
            else:
                stats.finish_reason = "stop"
            column.done = True


class _StreamRun:
    """One visual adapter's column: its own prompt (image vectors spliced into the embeddings by
    `backend.prepare(..., adapter=name)`) through the backend's own `stream`, as chat asks it."""

    def __init__(self, backend: Backend, prepared: Any, name: str, params: GenerationParams,
                 stop: threading.Event) -> None:
        self.backend = backend
        self.prepared = prepared
        self.params = params
        self.stop = stop
        self.column = Column(name, "", GenerationStats(prompt_tokens=prepared.prompt_tokens), False)

    def waiting(self) -> list[Column]:
        return [dataclasses.replace(self.column, stats=dataclasses.replace(self.column.stats))]

    def _snapshot(self, stats: GenerationStats, done: bool) -> list[Column]:
        stats = dataclasses.replace(stats)
        if not done:
            stats.total_s = time.perf_counter() - stats.started_at
        return [Column(self.column.adapter, self.column.text, stats, done)]

    def run(self) -> Iterator[list[Column]]:
        yield self.waiting()
        stream = self.backend.stream(self.prepared, self.params, self.stop)
        pieces = iter(stream)
        try:
            for piece in pieces:
                self.column.text += piece
                yield self._snapshot(stream.stats, False)
        finally:
            pieces.close()  # abandoned: GenerateStream sets stop and waits for generate to return
        self.column.stats = stream.stats
        self.column.done = True
        yield self._snapshot(stream.stats, True)


class _ColumnStreamer:
    """Receives each step's tokens (one per row) from `generate` and grows the columns.

    Each row's text is decoded by its own `TextStreamer` logic, exactly as a single answer's
    stream decodes it, so a column's text equals the same answer streamed alone. A row's
    end-of-sequence token is counted (as a single stream counts it) and ends that column; the
    padding `generate` adds after it is ignored.
    """

    def __init__(self, run: _BatchedRun, tokenizer: Any, eos_ids: set[int]) -> None:
        from transformers import TextStreamer

        class RowText(TextStreamer):
            def __init__(self, column: Column) -> None:
                super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
                self.column = column

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                self.column.text += text

        self.run = run
        self.eos_ids = eos_ids
        self.rows = [RowText(column) for column in run.columns]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        now = time.perf_counter()
        for row, token in enumerate(value.reshape(len(self.rows), -1)[:, -1].tolist()):
            column = self.run.columns[row]
            if column.done:
                continue
            stats = column.stats
            if stats.output_tokens == 0:
                stats.time_to_first_token_s = now - stats.started_at
            stats.output_tokens += 1
            self.rows[row].put(value.new_tensor([token]))
            at_length = stats.output_tokens >= self.run.params.max_new_tokens
            if token in self.eos_ids or at_length:
                self.flush(row)
                stats.total_s = now - stats.started_at
                stats.finish_reason = "length" if at_length else "stop"  # as a single stream says
                column.done = True
        self.run.updates.put(self.run.snapshot())

    def flush(self, row: int) -> None:
        self.rows[row].end()

    def end(self) -> None:
        """Called by `generate` when it is done; the worker finishes the columns after it."""
