"""Compile-time cost of analysing a LLaMA-shaped model (32 layers, vocab 32000, target width 4096).

Times `muprewrite.mupify(make_model, base=B, delta=2B, target=4096, materialize=False,
verify_width=False)` — the analysis only, no model is materialised at the target width — and
records peak resident memory. Every measurement runs in a fresh subprocess that reads
`resource.getrusage(RUSAGE_SELF).ru_maxrss` at its end; a subprocess that only imports torch and
muprewrite gives the baseline, so the table shows total peak RSS and the increment over it.
A second subprocess per base width calls the passes one by one (as `mupify` does) to break the
time and memory down by step, and a third runs `scan_init` alone, split into build and stats.

    python benchmarks/analysis_llama.py                 # B = 128 and 256
    python benchmarks/analysis_llama.py --bases 128     # B = 128 only

Targets (from the issue): <= 10 s and <= 1 GiB on this machine. Results: benchmarks/results/
analysis_llama.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGET = 4096
TIME_TARGET_S = 10.0
MEM_TARGET_MIB = 1024.0  # 1 GiB


# ---------------------------------------------------------------------------------------------
# Workers: each runs in its own fresh interpreter and prints one JSON line on stdout.

def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_threads(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def worker_baseline(_args) -> dict:
    import torch  # noqa: F401
    import muprewrite  # noqa: F401

    return {"peak_rss_mib": _peak_mib()}


def worker_mupify(args) -> dict:
    import torch  # noqa: F401
    import muprewrite
    import llama_like

    threads = _set_threads(args)
    inputs = llama_like.example_inputs()
    cpu0, start = _cpu_s(), time.perf_counter()
    result = muprewrite.mupify(llama_like.make_model, base=args.base, delta=2 * args.base, target=TARGET,
                               example_inputs=inputs, materialize=False, verify_width=False)
    wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "threads": threads, "peak_rss_mib": _peak_mib(), "n_parameters": len(result.plan.parameters),
            "n_edits": len(result.plan.edits), "edit_kinds": sorted({e.kind for e in result.plan.edits}),
            "warnings": sorted({w.code for w in result.plan.warnings})}


def worker_steps(args) -> dict:
    """mupify's pipeline stage by stage (muprewrite.pipeline, verification off), with time and RSS after each."""
    import muprewrite.api as api
    import llama_like
    from muprewrite import pipeline
    from muprewrite.report import Report

    threads = _set_threads(args)
    widths = api._check_widths(args.base, 2 * args.base, TARGET)
    steps = []

    class Recording(pipeline.Observer):
        def run(self, stage, compilation):
            super().run(stage, compilation)
            steps.append({"step": f"{stage.name} ({stage.description})", "seconds": self.timings[stage.name],
                          "peak_rss_mib": _peak_mib(), "current_rss_mib": _current_mib()})

    asked = pipeline.Compilation(llama_like.make_model, llama_like.example_inputs(), widths, verify_width=False)
    compiled = pipeline.compile(asked, Recording())
    start = time.perf_counter()
    Report(compiled.plan, compiled.diff, None)
    steps.append({"step": "report object", "seconds": time.perf_counter() - start,
                  "peak_rss_mib": _peak_mib(), "current_rss_mib": _current_mib()})
    return {"steps": steps, "threads": threads, "graph_nodes": len(compiled.captures.programs["target"].graph.nodes)}


def worker_scan_init(args) -> dict:
    """scan_init alone, split into building the CPU models and everything else (the statistics).

    Wraps the `build_deferred` that init_scan calls, so it measures whatever init_scan does now.
    """
    import llama_like
    from muprewrite.passes import init_scan
    from muprewrite.widths import Widths

    threads = _set_threads(args)
    builds = []
    original = init_scan.build_deferred

    def timed_build(factory, width, seed):
        t = time.perf_counter()
        built = original(factory, width, seed)
        n_params = sum(p.numel() for p in built.model.parameters())
        builds.append({"width": width, "n_params": n_params, "seconds": time.perf_counter() - t,
                       "peak_rss_mib": _peak_mib(), "current_rss_mib": _current_mib()})
        return built

    init_scan.build_deferred = timed_build
    try:
        start = time.perf_counter()
        init_scan.scan_init(llama_like.make_model, Widths(args.base, 2 * args.base, TARGET))
        total = time.perf_counter() - start
    finally:
        init_scan.build_deferred = original
    parts = [{"part": f"build + init on CPU at {b['width']} ({b['n_params'] / 1e6:.1f} M params, "
                      f"{b['n_params'] * 4 / 2**20:.0f} MiB fp32)",
              "seconds": b["seconds"], "peak_rss_mib": b["peak_rss_mib"], "current_rss_mib": b["current_rss_mib"]}
             for b in builds]
    parts.append({"part": "statistics (everything but the builds)", "seconds": total - sum(b["seconds"] for b in builds),
                  "peak_rss_mib": _peak_mib(), "current_rss_mib": _current_mib()})
    return {"parts": parts, "total_s": total, "threads": threads}


WORKERS = {"baseline": worker_baseline, "mupify": worker_mupify, "steps": worker_steps, "scan_init": worker_scan_init}


def spawn(worker: str, base: int | None = None, threads: int = 0) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker]
    if base is not None:
        cmd += ["--base", str(base)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {worker} (base={base}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------

def _summary(bd: dict, scan: dict | None, baseline: dict) -> str:
    steps = bd["steps"]
    total = sum(s["seconds"] for s in steps)
    cap = next(s for s in steps if s["step"].startswith("capture"))
    init = next(s for s in steps if s["step"].startswith("init"))
    before = steps[steps.index(init) - 1]["peak_rss_mib"]
    text = (f"Of {total:.1f} s, capture takes {cap['seconds']:.1f} s ({100 * cap['seconds'] / total:.0f}%: the "
            f"model built on meta and exported at base, delta and target, {bd['graph_nodes']} graph nodes each) and "
            f"the init scan {init['seconds']:.1f} s ({100 * init['seconds'] / total:.0f}%). Peak RSS is "
            f"{baseline['peak_rss_mib']:.0f} MiB after imports, {before:.0f} MiB before the init scan, which raises "
            f"it to {init['peak_rss_mib']:.0f} MiB (+{init['peak_rss_mib'] - before:.0f} MiB): it builds real fp32 "
            "models at base and delta width on the CPU with their fills deferred, and computes each parameter's "
            "std and kurtosis.")
    if scan:
        stats_s = scan["parts"][-1]["seconds"]
        text += (f" Run alone, init_scan peaks at {scan['parts'][-1]['peak_rss_mib']:.0f} MiB "
                 f"(+{scan['parts'][-1]['peak_rss_mib'] - baseline['peak_rss_mib']:.0f} MiB over the import "
                 f"baseline) and spends {stats_s:.1f} s of {scan['total_s']:.1f} s outside the model builds (the statistics).")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="128,256", help="comma-separated base widths (delta = 2 x base)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-step and scan_init subprocesses")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (default: torch's default)")
    parser.add_argument("--no-single-thread-row", action="store_true",
                        help="skip the extra mupify run with torch.set_num_threads(1) at the first base")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    from rich.console import Console
    from rich.table import Table

    from _common import env_md, environment, mark_end, md_table, write_results

    console = Console(width=max(Console().width, 150))
    env = environment()
    bases = [int(b) for b in args.bases.split(",") if b]
    import llama_like

    shape = llama_like.make_config(TARGET)
    console.print(f"[bold]analysis_llama[/]: LLaMA-like, {shape.n_layer} layers, vocab {shape.vocab_size}, "
                  f"{shape.n_head} heads / {shape.n_kv_head} KV heads, d_ffn {shape.d_ffn} at target {TARGET}")

    with console.status("baseline subprocess (import torch, muprewrite)"):
        baseline = spawn("baseline")
    runs, breakdowns, scans = [], {}, {}
    plan = [(base, args.threads) for base in bases]
    if not args.no_single_thread_row and args.threads != 1:
        plan.insert(1, (bases[0], 1))
    for base, threads in plan:
        with console.status(f"mupify subprocess, base {base}, threads {threads or 'default'}"):
            run = spawn("mupify", base, threads)
        run.update(base=base, delta=2 * base, target=TARGET,
                   increment_mib=run["peak_rss_mib"] - baseline["peak_rss_mib"])
        run["time_ok"] = run["wall_s"] <= TIME_TARGET_S
        run["mem_total_ok"] = run["peak_rss_mib"] <= MEM_TARGET_MIB
        run["mem_increment_ok"] = run["increment_mib"] <= MEM_TARGET_MIB
        runs.append(run)
        if not args.no_breakdown and threads == args.threads:
            with console.status(f"per-step subprocess, base {base}"):
                breakdowns[base] = spawn("steps", base, threads)
            with console.status(f"scan_init-only subprocess, base {base}"):
                scans[base] = spawn("scan_init", base, threads)
    mark_end(env)

    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    headers = ["base", "delta", "target", "torch threads", "wall s", "CPU s", "peak RSS MiB", "import baseline MiB", "increment MiB",
               f"<= {TIME_TARGET_S:g} s", "<= 1 GiB (total)", "<= 1 GiB (increment)"]
    rows = [[r["base"], r["delta"], r["target"], r["threads"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
             f"{r['peak_rss_mib']:.0f}",
             f"{baseline['peak_rss_mib']:.0f}", f"{r['increment_mib']:.0f}", verdict(r["time_ok"]),
             verdict(r["mem_total_ok"]), verdict(r["mem_increment_ok"])] for r in runs]
    table = Table(title=f"mupify analysis, LLaMA-like -> width {TARGET} (materialize=False, verify_width=False)")
    for h in headers:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    console.print(table)

    md = ["# analysis_llama: compile-time cost of analysing a LLaMA-shaped model", "",
          f"`muprewrite.mupify(make_model, base=B, delta=2B, target={TARGET}, example_inputs=(tokens (1, 64),), "
          "materialize=False, verify_width=False)` on `benchmarks/llama_like.py` "
          f"({shape.n_layer} layers, vocab {shape.vocab_size}, {shape.n_head} heads / {shape.n_kv_head} KV heads "
          f"(GQA), RoPE, RMSNorm, SwiGLU d_ffn {shape.d_ffn} at width {TARGET}, untied lm_head). "
          "Each row is one fresh subprocess; peak RSS is `ru_maxrss` at its end; the import baseline is a "
          "subprocess that only imports torch and muprewrite. `CPU s` is user + system CPU time of the "
          "mupify call (wall well above CPU/threads means the process waited for a core). "
          "The extra single-thread row (torch.set_num_threads(1)) shows how much of the default run is lost "
          "to intra-op threading when other work holds a core (see the contention probe below). "
          "Targets: <= 10 s and <= 1 GiB (1024 MiB).", "",
          md_table(headers, rows), ""]
    for r in runs:
        if r["threads"] == 1 and args.threads != 1:
            continue
        md.append(f"- base {r['base']}: plan with {r['n_parameters']} parameters, {r['n_edits']} edits "
                  f"({', '.join(r['edit_kinds'])}), warnings: {', '.join(r['warnings']) or 'none'}")
    md.append("")

    for base, bd in breakdowns.items():
        total = sum(s["seconds"] for s in bd["steps"])
        md += [f"## Per-step breakdown, base {base}", "", _summary(bd, scans.get(base), baseline), ""]
        table = Table(title=f"per-step breakdown, base {base} (separate subprocess; {bd['graph_nodes']} graph nodes per capture)")
        for h in ("step", "seconds", "% of time", "peak RSS after MiB", "current RSS after MiB"):
            table.add_column(h, justify="right" if h != "step" else "left")
        step_rows = [[s["step"], f"{s['seconds']:.2f}", f"{100 * s['seconds'] / total:.0f}%",
                      f"{s['peak_rss_mib']:.0f}", f"{s['current_rss_mib']:.0f}"] for s in bd["steps"]]
        step_rows.append(["total", f"{total:.2f}", "100%", "", ""])
        for row in step_rows:
            table.add_row(*row)
        console.print(table)
        md += [f"`mupify`'s pipeline stage by stage (muprewrite/pipeline.py, verification off; repeated layers "
               "captured once), in a separate fresh subprocess "
               f"({bd['graph_nodes']} nodes in each captured graph). `peak RSS after` is `ru_maxrss` "
               "after the step (monotone: a step that raises it set a new peak); `current RSS after` "
               "is the resident set right after the step.", "",
               md_table(["step", "seconds", "% of time", "peak RSS after MiB", "current RSS after MiB"], step_rows), ""]
        scan = scans.get(base)
        if scan:
            table = Table(title=f"scan_init alone, base {base} (fresh subprocess)")
            for h in ("part", "seconds", "peak RSS after MiB", "current RSS after MiB"):
                table.add_column(h, justify="right" if h != "part" else "left")
            scan_rows = [[p["part"], f"{p['seconds']:.2f}", f"{p['peak_rss_mib']:.0f}", f"{p['current_rss_mib']:.0f}"]
                         for p in scan["parts"]]
            for row in scan_rows:
                table.add_row(*row)
            console.print(table)
            md += [f"### scan_init alone, base {base}", "",
                   f"Import baseline {baseline['peak_rss_mib']:.0f} MiB.", "",
                   md_table(["part", "seconds", "peak RSS after MiB", "current RSS after MiB"], scan_rows), ""]
    md += ["## Environment", "", env_md(env)]
    data = {"env": env, "targets": {"wall_s": TIME_TARGET_S, "peak_rss_mib": MEM_TARGET_MIB},
            "model": {"target_width": TARGET, "n_layer": shape.n_layer, "vocab": shape.vocab_size,
                      "n_head": shape.n_head, "n_kv_head": shape.n_kv_head, "d_ffn_at_target": shape.d_ffn,
                      "example_inputs": "token ids (1, 64)"},
            "import_baseline": baseline, "runs": runs,
            "breakdown": {str(b): v for b, v in breakdowns.items()}, "scan_init": {str(b): v for b, v in scans.items()}}
    md_path, json_path = write_results("analysis_llama", "\n".join(md), data)
    console.print(f"wrote {os.path.relpath(md_path)} and {os.path.relpath(json_path)}")


if __name__ == "__main__":
    main()
