"""Session streaming vs raw `model.generate`: same model, same prompt, same greedy tokens.

Measures, over several interleaved runs (medians):
- raw: `model.generate(**inputs)` — time to first token is a separate 1-token generate, the
  peer's best case; tokens/s = (n-1) / (total - ttft).
- session: `ChatSession.send()` — prompt building, context fitting, worker thread, streamer,
  UI-facing text deltas; times taken from outside, from the call to the first and last delta.
Goal (issue 2): session tokens/s >= 0.95x raw and time to first token <= raw + 50 ms.

CPU timings on a 2-core machine are distorted 5-25x by anything else running: the load
average is printed, and a warning is given if the machine is busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="offline", choices=["offline", "tiny"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cache-dir", default=os.environ.get("MMCHAT_CACHE_DIR", "~/.cache/mmchat"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    import torch

    from mmchat.backends.base import GenerationParams
    from mmchat.backends.registry import BACKEND_LOADERS
    from mmchat.config import PRESETS
    from mmchat.session import ChatSession

    load1 = os.getloadavg()[0]
    print(f"load average (1 min) before: {load1:.2f} on {os.cpu_count()} cores; torch threads {torch.get_num_threads()}")
    if load1 > 0.5:
        print("WARNING: the machine is busy; CPU timings will be distorted")

    preset = PRESETS[args.preset]
    backend = BACKEND_LOADERS[preset.kind](preset, Path(args.cache_dir).expanduser())
    params = GenerationParams(max_new_tokens=args.tokens, temperature=0.0)
    question = "Explain in a few sentences why the sky is blue."
    session = ChatSession(backend, None, Path(tempfile.mkdtemp(prefix="mmchat-bench-")), system_prompt="Be helpful.")

    def prompt_inputs():
        list_messages = [
            {"role": "system", "content": [{"type": "text", "text": "Be helpful."}]},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ]
        return backend.prepare(list_messages, []).inputs

    model = backend.model
    tokenizer = getattr(backend, "tokenizer", None) or backend.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def raw_run() -> tuple[float, float, int]:
        inputs = prompt_inputs()
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(**inputs, **params.generate_kwargs() | {"max_new_tokens": 1}, pad_token_id=pad)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(**inputs, **params.generate_kwargs(), pad_token_id=pad)
            total = time.perf_counter() - t0
        n = int(out.shape[-1] - inputs["input_ids"].shape[-1])
        return ttft, (n - 1) / max(total - ttft, 1e-9), n

    def session_run() -> tuple[float, float, int]:
        session.clear()
        t0 = time.perf_counter()
        first = None
        for text in session.send(question, params=params):
            if first is None and text:  # the session first yields "" to show the question
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        n = session.history[-1].stats["output_tokens"]
        return first, (n - 1) / max(total - first, 1e-9), n

    raw_run(), session_run()  # warm-up: first calls pay one-off costs
    raw, ours = [], []
    for _ in range(args.runs):
        raw.append(raw_run())
        ours.append(session_run())
    med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    raw_ttft, raw_tps, raw_n = med(raw, 0), med(raw, 1), med(raw, 2)
    our_ttft, our_tps, our_n = med(ours, 0), med(ours, 1), med(ours, 2)
    print(f"\npreset {args.preset}: {args.runs} runs, greedy, up to {args.tokens} new tokens, medians")
    print(f"{'':10} {'tokens':>7} {'tok/s':>8} {'TTFT ms':>9}")
    print(f"{'raw':10} {raw_n:>7.0f} {raw_tps:>8.1f} {raw_ttft * 1e3:>9.1f}")
    print(f"{'session':10} {our_n:>7.0f} {our_tps:>8.1f} {our_ttft * 1e3:>9.1f}")
    ratio, delta_ms = our_tps / raw_tps, (our_ttft - raw_ttft) * 1e3
    print(f"\ntokens/s ratio session/raw: {ratio:.3f}x (goal >= 0.95x) {'OK' if ratio >= 0.95 else 'MISSED'}")
    print(f"time to first token: {delta_ms:+.1f} ms vs raw (goal <= +50 ms) {'OK' if delta_ms <= 50 else 'MISSED'}")
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    return 0
