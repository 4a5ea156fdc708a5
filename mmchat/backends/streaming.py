"""Streaming text out of transformers' `generate` running in a worker thread.

`GenerateStream` wraps `TextIteratorStreamer`: a worker thread runs `model.generate`, the
caller iterates text deltas, a `StoppingCriteria` watches a `threading.Event` so "stop" ends
the thread at the next token, and abandoning the iterator stops it too. A long text-only
prompt is prefilled in chunks before `generate` continues from the cache, so a stop pressed
during the prefill ends the worker within one chunk instead of after the whole prompt. Inputs
that carry `inputs_embeds` beside `input_ids` (image vectors spliced in, see
`mmchat.backends.splice`) are generated from the embeddings (transformers' decoder-only
`generate` reads them for the prompt and the ids for counting and repetition control) and
prefilled in the same chunks. It counts tokens and times the first one. It knows nothing
about prompts, images or sessions.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, ContextManager, Iterator

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from mmchat.backends.base import GenerationParams, GenerationStats, TextStream

log = logging.getLogger(__name__)

# Long-lived workers: torch's intra-op thread team is set up per calling thread, and a fresh
# thread per answer paid that again (measured +20-40 ms to the first token on 2 cores).
_WORKERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mmchat-generate")
# Prompt tokens per prefill step: small enough that a stop is seen within ~0.2 s on 2 CPU
# cores with the 135M offline model, large enough that chunking costs little.
PREFILL_CHUNK = 256


class StopOnEvent(StoppingCriteria):
    """Ends every row of a `generate` call once `event` is set (checked after each token)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _AnswerOnlyNoRepeatNGram(LogitsProcessor):
    """transformers' no-repeat-n-gram rule over the answer alone, not the prompt.

    The stock processor counts the prompt's n-grams too, so with retrieved sources in the
    prompt it forbids quoting them: the small model then paraphrases facts into nonsense.
    """

    def __init__(self, ngram_size: int, prompt_length: int) -> None:
        self.inner = NoRepeatNGramLogitsProcessor(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.inner(input_ids[:, self.prompt_length:], scores)


def answer_only_repetition_control(kwargs: dict[str, Any], prompt_length: int) -> list[LogitsProcessor]:
    """Turn `repetition_penalty`/`no_repeat_ngram_size` in generate kwargs into processors that
    ignore the prompt (so an answer may quote its sources but not repeat itself)."""
    processors: list[LogitsProcessor] = []
    penalty = kwargs.pop("repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_length))
    ngram = kwargs.pop("no_repeat_ngram_size", None)
    if ngram:
        processors.append(_AnswerOnlyNoRepeatNGram(int(ngram), prompt_length))
    return processors


class _CountingStreamer(TextIteratorStreamer):
    """Counts generated tokens and stamps the first one as it arrives from `generate`."""

    def __init__(self, tokenizer: Any, stats: GenerationStats, **kwargs: Any) -> None:
        super().__init__(tokenizer, **kwargs)
        self.stats = stats
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
        else:
            if self.stats.output_tokens == 0:
                self.stats.time_to_first_token_s = time.perf_counter() - self.stats.started_at
            self.stats.output_tokens += int(value.numel())
        super().put(value)


class GenerateStream(TextStream):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        inputs: dict[str, Any],
        params: GenerationParams,
        stop: threading.Event | None = None,
        extra_generate_kwargs: dict[str, Any] | None = None,
        hold: Callable[[], ContextManager[Any]] | None = None,
    ) -> None:
        self.stats = GenerationStats(prompt_tokens=int(inputs["input_ids"].shape[-1]))
        self._stop = stop or threading.Event()
        self._streamer = _CountingStreamer(
            tokenizer, self.stats, skip_prompt=True, skip_special_tokens=True, timeout=None
        )
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None)
        generate_kwargs = {**params.generate_kwargs(), **(extra_generate_kwargs or {})}
        processors = answer_only_repetition_control(generate_kwargs, self.stats.prompt_tokens)
        self._kwargs = {
            **inputs,
            **generate_kwargs,
            "logits_processor": LogitsProcessorList(processors),
            "streamer": self._streamer,
            "stopping_criteria": StoppingCriteriaList([StopOnEvent(self._stop)]),
            "pad_token_id": pad_id,
        }
        self._model = model
        # Held around the whole generation (an adapter host's `activate`): yields the model.
        self._hold = hold or (lambda: contextlib.nullcontext(model))
        self._max_new_tokens = params.max_new_tokens
        self._error: BaseException | None = None
        self._future: Future | None = None

    def _run(self) -> None:
        try:
            with torch.inference_mode(), self._hold() as model:
                self._model = model
                if self._prefill_in_chunks():
                    self._model.generate(**self._kwargs)
                else:  # stopped during the prefill: nothing was generated
                    self._streamer.end()
        except BaseException as err:  # surfaced to the consumer in __iter__
            self._error = err
            self._streamer.end()

    def _prefill_in_chunks(self) -> bool:
        """Fill the KV cache for all but the last prompt token, checking `stop` between chunks.

        Only for prompts of ids or embeddings (pixel inputs are spliced in by the model's own
        forward); `generate` then runs just the last token (of the ids, or of `inputs_embeds`,
        which it slices past the cache itself). Returns False if stopped meanwhile.
        """
        input_ids = self._kwargs["input_ids"]
        embeds = self._kwargs.get("inputs_embeds")
        length = int(input_ids.shape[-1])
        if self._stop.is_set():
            return False
        if length <= PREFILL_CHUNK or any(k in self._kwargs for k in ("pixel_values", "cache", "past_key_values")):
            return True
        from transformers import DynamicCache

        cache = DynamicCache(config=self._model.config)
        mask = self._kwargs.get("attention_mask")
        for start in range(0, length - 1, PREFILL_CHUNK):
            if self._stop.is_set():
                return False
            end = min(start + PREFILL_CHUNK, length - 1)
            piece = {"inputs_embeds": embeds[:, start:end]} if embeds is not None else {
                "input_ids": input_ids[:, start:end]}
            self._model(
                **piece,
                attention_mask=mask[:, :end] if mask is not None else None,
                cache=cache,
                cache_position=torch.arange(start, end, device=input_ids.device),
                use_cache=True,
                logits_to_keep=1,
            )
        self._kwargs["cache"] = cache
        return not self._stop.is_set()

    @property
    def finished(self) -> bool:
        """True once `generate` has returned (after exhaustion, stop or abandonment)."""
        return self._future is not None and self._future.done()

    def __iter__(self) -> Iterator[str]:
        self.stats.started_at = time.perf_counter()
        self._future = _WORKERS.submit(self._run)
        exhausted = False
        try:
            for text in self._streamer:
                if text:
                    yield text
            exhausted = True
        finally:
            if not exhausted:
                # The consumer abandoned us (GeneratorExit): the worker must not keep
                # generating into a queue nobody reads.
                self._stop.set()
            self._future.result()  # _run never raises; this waits for generate() to return
            self.stats.total_s = time.perf_counter() - self.stats.started_at
            if self._error is not None:
                self.stats.finish_reason = "error"
                raise self._error
            if self._stop.is_set():
                self.stats.finish_reason = "cancelled"
            elif self.stats.output_tokens >= self._max_new_tokens:
                self.stats.finish_reason = "length"
            else:
                self.stats.finish_reason = "stop"
