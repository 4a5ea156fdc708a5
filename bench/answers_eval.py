"""Answers the offline model gives with sources: evidence shown, loops, first-token time.

`python -m bench answers [--limit N] [--tokens N] [--no-peer]`

Every question of the frozen evaluation set (`tests/fixtures/rag_eval`) is asked through a
`ChatSession` — the object the Chat tab drives — with the offline preset (SmolLM2-135M on
real shipped weights) and a real knowledge base holding the set's documents, in the default
state (retrieval on, greedy, the preset's answer policy). Per question it records whether a
supporting passage shown under the answer contains the expected fact (the question's
`answer_regex`), whether the answer loops, its time to first token and prompt size.

The peer, measured in the same run on the same questions, is the policy before this change:
four whole chunks per prompt and no repetition control (`--no-peer` skips it). The machine
has 2 cores: check it is idle first (`uptime`), other work distorts timings 5-25x.

It measures; it changes nothing and tunes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "tests" / "fixtures" / "rag_eval"
RESULTS = Path(__file__).resolve().parent / "results"


def loops(text: str) -> bool:
    """True for degenerate output: a phrase repeated back to back, or a 3-word run 4+ times."""
    words = text.split()
    for n in range(1, 9):
        for start in range(0, max(len(words) - 3 * n + 1, 0)):
            piece = words[start:start + n]
            if piece == words[start + n:start + 2 * n] == words[start + 2 * n:start + 3 * n]:
                if n > 1 or len(piece[0]) > 1 or not piece[0].isalnum() or words[start + 3 * n:start + 4 * n] == piece:
                    return True
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 2):
        key = tuple(w.lower() for w in words[i:i + 3])
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values(), default=0) >= 4


def run(session_factory, questions: list[dict[str, Any]], params: Any) -> list[dict[str, Any]]:
    rows = []
    for q in questions:
        session = session_factory()
        started = time.perf_counter()
        for _ in session.send(q["question"], params=params):
            pass
        answer = session.history[-1]
        trace = answer.retrieval or {}
        used = trace.get("hits", [])[: trace.get("used", 0)]
        pattern = re.compile(q["answer_regex"], re.IGNORECASE)
        rows.append({
            "question": q["question"], "split": f"{q['lang']}→{q.get('doc_lang') or q['lang']}",
            "evidence_has_fact": any(pattern.search(h.get("evidence", "")) for h in used),
            "prompt_has_fact": any(pattern.search(h.get("passage") or h.get("text", "")) for h in used),
            "sources": len(used),
            "loops": loops(answer.text),
            "ttft_s": (answer.stats or {}).get("time_to_first_token_s"),
            "prompt_tokens": (answer.stats or {}).get("prompt_tokens"),
            "output_tokens": (answer.stats or {}).get("output_tokens"),
            "finish": (answer.stats or {}).get("finish_reason"),
            "seconds": time.perf_counter() - started,
            "answer": answer.text,
        })
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    ttfts = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    return {
        "questions": n,
        "evidence_has_fact": sum(r["evidence_has_fact"] for r in rows) / n,
        "prompt_has_fact": sum(r["prompt_has_fact"] for r in rows) / n,
        "loops": sum(r["loops"] for r in rows),
        "hit_length_limit": sum(r["finish"] == "length" for r in rows),
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p90_s": sorted(ttfts)[int(0.9 * (len(ttfts) - 1))] if ttfts else None,
        "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in rows),
        "answer_s_median": statistics.median(r["seconds"] for r in rows),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench answers", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="ask only the first N questions (0: all)")
    parser.add_argument("--tokens", type=int, default=0, help="max new tokens (0: the app's default)")
    parser.add_argument("--no-peer", action="store_true", help="skip the old-policy peer")
    args = parser.parse_args(argv)

    from mmchat.backends.base import GenerationParams
    from mmchat.backends.registry import load_backend
    from mmchat.config import AnswerPolicy, AppConfig, KnowledgeConfig, ModelConfig
    from mmchat.knowledge.base import KnowledgeBase
    from mmchat.session import ChatSession, RagOptions
    from mmchat.vision import load_image_encoder

    config = AppConfig()
    backend = load_backend(ModelConfig(preset="offline"))
    encoder = load_image_encoder(config.encoder, cache_dir=config.cache_dir())
    questions = json.loads((EVAL / "questions.json").read_text(encoding="utf-8"))
    if args.limit:
        questions = questions[: args.limit]
    gen = config.generation
    params = GenerationParams.for_policy(
        backend.info.answer, max_new_tokens=args.tokens or gen.max_new_tokens, temperature=gen.temperature,
        top_p=gen.top_p,
    )
    with tempfile.TemporaryDirectory(prefix="mmchat-answers-") as tmp:
        kb = KnowledgeBase(KnowledgeConfig(path=str(Path(tmp) / "kb"), seed_demo=False), encoder=encoder)
        report = kb.ingest(sorted((EVAL / "docs").iterdir()))
        print(f"indexed: {report.summary()}")

        def session_factory(backend=backend):
            return ChatSession(backend, encoder, Path(tmp) / "uploads", system_prompt=gen.system_prompt,
                               knowledge=kb, rag=RagOptions(top_k=kb.config.top_k))

        results = {"policy": dataclasses.asdict(backend.info.answer), "rows": run(session_factory, questions, params)}
        results["summary"] = summary(results["rows"])
        if not args.no_peer:
            old = AnswerPolicy(max_sources=4)
            peer_backend = dataclasses.replace(backend.info, answer=old)
            original_info = backend.info
            backend.info = peer_backend
            try:
                peer_params = GenerationParams.for_policy(old, max_new_tokens=params.max_new_tokens,
                                                          temperature=params.temperature, top_p=params.top_p)
                results["peer_rows"] = run(session_factory, questions, peer_params)
            finally:
                backend.info = original_info
            results["peer_summary"] = summary(results["peer_rows"])

    def line(name: str, s: dict[str, Any]) -> str:
        return (f"| {name} | {s['evidence_has_fact']:.3f} | {s['prompt_has_fact']:.3f} | {s['loops']} | "
                f"{s['hit_length_limit']} | {s['ttft_median_s']:.2f} / {s['ttft_p90_s']:.2f} | "
                f"{s['prompt_tokens_median']:.0f} | {s['answer_s_median']:.1f} |")

    print(f"\n{len(questions)} questions, offline preset, greedy, max new tokens {params.max_new_tokens}\n")
    print("| policy | shown passage has the fact | prompt has the fact | loops | hit max tokens | "
          "first token median / p90 s | prompt tokens median | answer s median |")
    print("|---|---|---|---|---|---|---|---|")
    print(line("offline preset (2 sources, trimmed, repetition control)", results["summary"]))
    if "peer_summary" in results:
        print(line("peer: 4 whole chunks, no repetition control", results["peer_summary"]))
        ours, peer = results["summary"], results["peer_summary"]
        print(f"\nfirst token: {ours['ttft_median_s'] / peer['ttft_median_s']:.2f}x the peer's median")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"answers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
