"""LoRA adapters on the offline model: switching, loading, decode cost and Compare batching.

On SmolLM2-135M (fp32, CPU) with LoRA adapters on q_proj/v_proj (ranks 8, 12 and 16, random
non-zero weights, written to a temporary folder), it measures, peers in the same run:
- `set_adapter` p50/p95 between loaded adapters (2 and 20 loaded), and the host's whole
  per-generation switch (`AdapterHost.activate`: layers on, set_adapter, layers off).
  Goal: p95 <= 5 ms.
- cold load of one more adapter with 1 and with 20 already loaded: peft's `load_adapter`,
  with `low_cpu_mem_usage=True`, `hotswap_adapter` (new weights into a loaded slot) and
  `AdapterHost.load` (what the app does: file checks + load_adapter). Goal: <= 100 ms, and
  at 20 loaded <= 1.5x the time at 1.
- decode tokens/s with an adapter unmerged vs adapters disabled vs merged into a copy
  (`merge_and_unload`), same forced token count. Goal: unmerged costs <= 15% of merged.
- Compare: base + 2 adapters in one batched `mmchat.compare.compare` vs the same three asked
  one after another through `backend.prepare`/`stream`. Goal: batched <= 0.6x the wall time.

CPU timings on a 2-core machine shift with anything else running: the load average before
and after is printed and stored with the figures. On a busy machine, run it with
`OMP_NUM_THREADS=1`: torch's two intra-op threads fighting another process for the two cores
made each step up to ~20x slower here (decode 9.4 s vs 0.4 s for 4 tokens), while one thread
decodes as fast as two on an idle machine (this model is bound by memory, not compute).
A full run takes ~80 s with one thread. Results: `bench/results/adapters-*.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["q_proj", "v_proj"]
RANKS = (8, 12, 16)
QUESTION = "Explain in a few sentences why the sky is blue."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench adapters", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs for loads, decode and Compare")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument("--switches", type=int, default=200, help="set_adapter calls timed")
    parser.add_argument("--loaded", type=int, default=20, help="adapters already loaded for the 'many' case")
    parser.add_argument("--cache-dir", default=os.environ.get("MMCHAT_CACHE_DIR", "~/.cache/mmchat"))
    return parser.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def make_adapters(model, root: Path, ranks: list[int]) -> list[Path]:
    """One peft adapter folder per entry of `ranks` for `model`'s architecture.

    One template per rank comes from peft itself (its config and tensor names); each adapter
    then gets its own random, non-zero A and B, so every one changes the answer differently.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    templates = {}
    for rank in sorted(set(ranks)):
        folder = root / f"template-r{rank}"
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(str(folder))
        peft_model.unload()  # the base modules back as they were, for the next template
        templates[rank] = (folder, load_file(str(folder / "adapter_model.safetensors")))
    folders = []
    for index, rank in enumerate(ranks):
        template, tensors = templates[rank]
        generator = torch.Generator().manual_seed(1000 + index)
        weights = {}
        for key, tensor in tensors.items():
            fan_in = tensor.shape[1]
            scale = 1.0 / fan_in**0.5 if "lora_A" in key else 0.02
            weights[key] = (torch.randn(tensor.shape, generator=generator) * scale).contiguous()
        folder = root / f"adapter{index:02d}"
        folder.mkdir()
        shutil.copy(template / "adapter_config.json", folder / "adapter_config.json")
        save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        folders.append(folder)
    return folders


def time_switches(host, names: list[str], count: int) -> dict[str, float]:
    """p50/p95 (ms) of `set_adapter` cycling through `names`, and of the host's whole switch."""
    model = host.model
    plain, whole = [], []
    for index in range(count):
        name = names[index % len(names)]
        t0 = time.perf_counter()
        model.set_adapter(name)
        plain.append((time.perf_counter() - t0) * 1e3)
    for index in range(count // 2):
        name = names[index % len(names)]
        t0 = time.perf_counter()
        with host.activate(name):
            pass
        whole.append((time.perf_counter() - t0) * 1e3)
    return {"set_adapter_p50_ms": statistics.median(plain), "set_adapter_p95_ms": percentile(plain, 95),
            "activate_p50_ms": statistics.median(whole), "activate_p95_ms": percentile(whole, 95)}


def time_loads(host, spare: list[Path], slot: str, repeats: int = 3) -> dict[str, list[float]]:
    """ms to add one adapter (then removed again) in each way, `repeats` times, with the host as it is."""
    from peft.utils.hotswap import hotswap_adapter

    model = host.model
    results: dict[str, list[float]] = {"load_adapter": [], "low_cpu_mem_usage": [], "hotswap_adapter": [],
                                       "host_load": []}
    for repeat in range(repeats):
        folder = spare[repeat % len(spare)]
        for way in results:
            t0 = time.perf_counter()
            if way == "load_adapter":
                model.load_adapter(str(folder), adapter_name="cold")
            elif way == "low_cpu_mem_usage":
                model.load_adapter(str(folder), adapter_name="cold", low_cpu_mem_usage=True)
            elif way == "hotswap_adapter":  # same rank as the slot it replaces
                hotswap_adapter(model, str(folder), adapter_name=slot)
            else:
                host.load("cold", folder)
            results[way].append((time.perf_counter() - t0) * 1e3)
            if way == "host_load":
                host.unload("cold")
            elif way != "hotswap_adapter":
                model.delete_adapter("cold")
    model.base_model.disable_adapter_layers()  # as the host keeps it between generations
    return results


def decode_rate(model, inputs: dict, tokens: int, pad_id: int) -> float:
    """Decode tokens/s: (tokens - 1) / (time for `tokens` - time for 1), both forced to length."""
    import torch

    def run(n: int) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id)
            return time.perf_counter() - t0

    first = run(1)
    return (tokens - 1) / max(run(tokens) - first, 1e-9)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    import copy

    import torch

    from mmchat.backends.base import GenerationParams
    from mmchat.backends.offline import OfflineBackend
    from mmchat.compare import compare
    from mmchat.config import PRESETS

    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"on {os.cpu_count()} cores; torch threads {torch.get_num_threads()}")
    if load_before[0] > 0.5:
        print("WARNING: the machine is busy; CPU timings will be distorted"
              + ("" if torch.get_num_threads() == 1 else " (OMP_NUM_THREADS=1 steadies them)"))
    started = time.perf_counter()
    backend = OfflineBackend.from_preset(PRESETS["offline"], Path(args.cache_dir).expanduser())
    host, tokenizer = backend.adapters, backend.tokenizer
    pad_id = tokenizer.eos_token_id
    root = Path(tempfile.mkdtemp(prefix="mmchat-bench-adapters-"))
    figures: dict[str, float] = {}
    try:
        from mmchat.backends.builtin import load_smollm2

        template_model, _ = load_smollm2(Path(args.cache_dir).expanduser())  # not the serving model
        # Loaded ones cycle through the ranks; the spares (cold loads, hotswaps into the first
        # loaded adapter's slot) have its rank, as hotswapping needs.
        ranks = [RANKS[i % len(RANKS)] for i in range(args.loaded)] + [RANKS[0]] * 3
        folders = make_adapters(template_model, root, ranks)
        del template_model
        loaded, spare = folders[:args.loaded], folders[args.loaded:]
        names = [folder.name for folder in loaded]

        sections = {"setup_s": time.perf_counter() - started}
        # --- switching and cold loads: 1 (or 2) loaded, then `args.loaded` loaded
        host.load(names[0], loaded[0])
        few = time_loads(host, spare, slot=names[0], repeats=args.runs)
        host.load(names[1], loaded[1])
        switch_few = time_switches(host, names[:2], args.switches)
        for name, folder in zip(names[2:], loaded[2:]):
            host.load(name, folder)
        many = time_loads(host, spare, slot=names[0], repeats=args.runs)
        switch_many = time_switches(host, names, args.switches)
        figures.update({f"{k}_2": v for k, v in switch_few.items()})
        figures.update({f"{k}_{args.loaded}": v for k, v in switch_many.items()})
        for count, times in ((1, few), (args.loaded, many)):
            for way, values in times.items():
                figures[f"cold_{way}_{count}_ms"] = min(values)
                figures[f"cold_{way}_{count}_ms_median"] = statistics.median(values)

        sections["switch_and_load_s"] = time.perf_counter() - started - sum(sections.values())
        # --- decode: adapter unmerged vs adapters disabled vs merged into a copy. The hotswap
        # above replaced names[0]'s weights; names[1] is as loaded.
        messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
        inputs = backend.prepare(messages, []).inputs
        merged = copy.deepcopy(host.model)
        merged.base_model.enable_adapter_layers()
        merged.set_adapter(names[1])
        merged = merged.merge_and_unload()
        unmerged_model = host.model
        rates: dict[str, list[float]] = {"unmerged": [], "disabled": [], "merged": [], "merged_3rows": []}
        rows3 = {key: value.repeat(3, 1) for key, value in inputs.items()}  # the batching ceiling, no adapters
        decode_rate(merged, inputs, 4, pad_id)  # warm-up
        for _ in range(args.runs):
            with host.activate(names[1]) as model:
                rates["unmerged"].append(decode_rate(model, inputs, args.tokens, pad_id))
            with host.activate(None) as model:
                rates["disabled"].append(decode_rate(model, inputs, args.tokens, pad_id))
            rates["merged"].append(decode_rate(merged, inputs, args.tokens, pad_id))
            rates["merged_3rows"].append(decode_rate(merged, rows3, args.tokens, pad_id))  # steps/s
        del merged
        for key, values in rates.items():
            figures[f"decode_{key}_tok_s"] = max(values)
            figures[f"decode_{key}_tok_s_median"] = statistics.median(values)
        assert unmerged_model is host.model

        sections["decode_s"] = time.perf_counter() - started - sum(sections.values())
        # --- Compare: base + 2 adapters batched vs the three one after another
        for name in names[2:]:
            host.unload(name)  # the app's usual case: a few adapters loaded
        params = GenerationParams(max_new_tokens=args.tokens, temperature=0.0)
        columns = ["base", names[0], names[1]]

        def batched() -> tuple[float, list[int]]:
            t0 = time.perf_counter()
            final = list(compare(backend, QUESTION, None, columns, params))[-1]
            return time.perf_counter() - t0, [c.stats.output_tokens for c in final]

        def sequential() -> tuple[float, list[int]]:
            t0 = time.perf_counter()
            counts = []
            for name in columns:
                stream = backend.stream(backend.prepare(messages, [], adapter=name), params)
                "".join(stream)
                counts.append(stream.stats.output_tokens)
            return time.perf_counter() - t0, counts

        batched(), sequential()  # warm-up
        runs_b, runs_s = [], []
        for _ in range(args.runs):
            runs_b.append(batched())
            runs_s.append(sequential())
        figures["compare_batched_s"] = min(r[0] for r in runs_b)
        figures["compare_sequential_s"] = min(r[0] for r in runs_s)
        sections["compare_s"] = time.perf_counter() - started - sum(sections.values())
        figures["compare_batched_s_median"] = statistics.median(r[0] for r in runs_b)
        figures["compare_sequential_s_median"] = statistics.median(r[0] for r in runs_s)
        compare_tokens = runs_b[-1][1]
        sequential_tokens = runs_s[-1][1]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n = args.loaded
    unmerged_cost = 1 - figures["decode_unmerged_tok_s"] / figures["decode_merged_tok_s"]
    compare_ratio = figures["compare_batched_s"] / figures["compare_sequential_s"]
    slow_down = {way: figures[f"cold_{way}_{n}_ms"] / figures[f"cold_{way}_1_ms"]
                 for way in ("load_adapter", "low_cpu_mem_usage", "hotswap_adapter", "host_load")}
    rows = [
        ("set_adapter p50, 2 loaded (ms)", figures["set_adapter_p50_ms_2"], None),
        ("set_adapter p95, 2 loaded (ms)", figures["set_adapter_p95_ms_2"], ("<=", 5.0)),
        (f"set_adapter p95, {n} loaded (ms)", figures[f"set_adapter_p95_ms_{n}"], ("<=", 5.0)),
        ("host switch (activate) p95, 2 loaded (ms)", figures["activate_p95_ms_2"], ("<=", 5.0)),
        (f"host switch (activate) p95, {n} loaded (ms)", figures[f"activate_p95_ms_{n}"], ("<=", 5.0)),
    ]
    for way in ("load_adapter", "low_cpu_mem_usage", "hotswap_adapter", "host_load"):
        rows.append((f"cold {way}, 1 loaded (ms)", figures[f"cold_{way}_1_ms"], ("<=", 100.0)))
        rows.append((f"cold {way}, {n} loaded (ms)", figures[f"cold_{way}_{n}_ms"], ("<=", 100.0)))
        rows.append((f"cold {way}: {n} loaded / 1 loaded (x)", slow_down[way], ("<=", 1.5)))
    rows += [
        ("decode, adapter unmerged (tok/s)", figures["decode_unmerged_tok_s"], None),
        ("decode, adapters disabled (tok/s)", figures["decode_disabled_tok_s"], None),
        ("decode, merged copy (tok/s)", figures["decode_merged_tok_s"], None),
        ("unmerged cost vs merged (fraction)", unmerged_cost, ("<=", 0.15)),
        ("unmerged cost vs disabled (fraction)",
         1 - figures["decode_unmerged_tok_s"] / figures["decode_disabled_tok_s"], ("<=", 0.15)),
        ("plain model, 3 rows/step vs 3 steps of 1 row (x)",
         figures["decode_merged_tok_s"] / (3 * figures["decode_merged_3rows_tok_s"]), None),
        ("Compare base+2 batched (s)", figures["compare_batched_s"], None),
        ("Compare base+2 one after another (s)", figures["compare_sequential_s"], None),
        ("Compare batched / sequential (x)", compare_ratio, ("<=", 0.6)),
    ]
    load_after = os.getloadavg()
    print(f"\noffline model (SmolLM2-135M fp32, CPU), LoRA r={'/'.join(map(str, RANKS))} on q/v; "
          f"{args.runs} interleaved runs, {args.tokens} tokens")
    print("durations and rates: the best of the runs (the one least disturbed by other load; medians are in "
          "the JSON); switches: p50/p95 of every call")
    print(f"{'figure':46} {'value':>9}  {'goal':>8}  result")
    table = []
    for label, value, goal in rows:
        verdict = "" if goal is None else ("PASS" if value <= goal[1] else "FAIL")
        goal_text = "" if goal is None else f"{goal[0]} {goal[1]:g}"
        print(f"{label:46} {value:>9.3f}  {goal_text:>8}  {verdict}")
        table.append({"figure": label, "value": round(value, 4), "goal": goal_text, "result": verdict})
    print(f"\nCompare output tokens per column: batched {compare_tokens}, one after another {sequential_tokens}")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
          f"whole run {time.perf_counter() - started:.0f} s ("
          + ", ".join(f"{key.removesuffix('_s')} {value:.0f} s" for key, value in sections.items()) + ")")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"adapters-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "model": "SmolLM2-135M-Instruct fp32 CPU", "ranks": RANKS, "targets": TARGETS, "runs": args.runs,
        "tokens": args.tokens, "loaded": n, "load_before": load_before, "load_after": load_after,
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "figures": figures, "table": table,
        "compare_tokens": {"batched": compare_tokens, "sequential": sequential_tokens}, "sections_s": sections,
    }, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
