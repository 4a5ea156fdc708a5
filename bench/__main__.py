"""Run every benchmark: `python -m bench [--preset offline|tiny] [--runs N] [--tokens N]`."""

from bench.stream_vs_generate import main

if __name__ == "__main__":
    raise SystemExit(main())
