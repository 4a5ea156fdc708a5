"""Run the benchmarks: `python -m bench [stream|knowledge|retrieval-eval|answers|adapters|finetune] [options]`.

- `python -m bench`: every benchmark, each with its defaults;
- `python -m bench stream [--preset offline|tiny] [--runs N] [--tokens N]`: session streaming
  vs raw `model.generate` (`bench/stream_vs_generate.py`);
- `python -m bench knowledge [--sizes N ...] [--queries N]`: knowledge store retrieval and
  ingestion vs raw Chroma (`bench/knowledge.py`);
- `python -m bench retrieval-eval [--sets eval old] [--top-k 5]`: retrieval quality (hit@1,
  hit@5, MRR) of dense, BM25 and hybrid per language split, and the relevance-floor
  calibration (`bench/retrieval_eval.py`);
- `python -m bench answers [--limit N]`: the offline model answering the evaluation set with
  sources: supporting passage has the fact, loops, first token, vs the old policy
  (`bench/answers_eval.py`);
- `python -m bench adapters [--runs N] [--tokens N] [--loaded N]`: LoRA adapters on the offline
  model: set_adapter p50/p95, cold loads (plain, low_cpu_mem_usage, hotswap) with 1 and 20
  loaded, decode tokens/s unmerged vs disabled vs merged, Compare batched vs one after another
  (`bench/adapters.py`);
- `python -m bench finetune [--steps N] [--rows N]`: the quick preset on a user-style dataset
  through the trainer process (minutes to format compliance >= 0.9), chat first token while
  training vs idle, stop latency, step time subprocess vs in-process (`bench/finetune.py`).
Options without a name (`python -m bench --preset tiny`) go to `stream`, as they did before
there was more than one benchmark. Each prints its own table; results go to `bench/results/`.
"""

from __future__ import annotations

import sys


def _stream(argv):
    from bench.stream_vs_generate import main

    sys.argv[0] = "python -m bench stream"  # its argparse names itself after argv[0]
    return main(argv)


def _knowledge(argv):
    from bench.knowledge import main

    return main(argv)


def _retrieval_eval(argv):
    from bench.retrieval_eval import main

    return main(argv)


def _answers(argv):
    from bench.answers_eval import main

    return main(argv)


def _adapters(argv):
    from bench.adapters import main

    return main(argv)


def _finetune(argv):
    from bench.finetune import main

    return main(argv)


BENCHMARKS = {"stream": _stream, "knowledge": _knowledge, "retrieval-eval": _retrieval_eval, "answers": _answers,
              "adapters": _adapters, "finetune": _finetune}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] in BENCHMARKS:
        return BENCHMARKS[argv[0]](argv[1:])
    if argv:  # the original CLI: `python -m bench --preset tiny ...`
        return _stream(argv)
    status = 0
    for name, run in BENCHMARKS.items():
        print(f"\n===== {name} =====", flush=True)
        status = max(status, run([]) or 0)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
