"""Shared helpers for the benchmarks: environment facts and writing results/NAME.{md,json}."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import gc
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def contention_probe(n: int = 200) -> float:
    """Microseconds per small intra-op-parallel torch op (std of 65k float64) at torch's thread count.

    About 30-100 us on an idle machine; when other processes hold the cores, OpenMP's barrier
    waits for a descheduled thread and this jumps to milliseconds. Recorded so a slow run can be
    told apart from a slow program.
    """
    import time

    import torch

    x = torch.randn(1 << 16, dtype=torch.float64)
    x.std()
    start = time.perf_counter()
    for _ in range(n):
        x.std()
    return 1e6 * (time.perf_counter() - start) / n


def quantile(xs, q):
    xs = sorted(xs)
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def interleaved_times(original, rewritten, steps: int) -> tuple[list, list]:
    """Seconds of `steps` calls of each (a callable timing one step), interleaved ABBA so drifts
    in machine speed hit both alike, with Python's garbage collector off while timing."""
    orig, rew = [], []
    gc.collect()
    gc.disable()
    try:
        for i in range(steps):
            if i % 2 == 0:
                orig.append(original()), rew.append(rewritten())
            else:
                rew.append(rewritten()), orig.append(original())
    finally:
        gc.enable()
    return orig, rew


def paired_ratios(original: list, rewritten: list) -> dict:
    """Statistics of interleaved step times, rewritten / original: the ratio of medians (the
    verdict), the ratio of the fastest steps and the per-pair ratios' median and IQR (both less
    sensitive to a busy machine)."""
    ratios = [b / a for a, b in zip(original, rewritten)]
    return {
        "ratio_of_medians": statistics.median(rewritten) / statistics.median(original),
        "ratio_of_mins": min(rewritten) / min(original),
        "pair_ratio_median": statistics.median(ratios),
        "pair_ratio_p25": quantile(ratios, 0.25), "pair_ratio_p75": quantile(ratios, 0.75),
    }


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def mark_end(env: dict) -> None:
    """Record the load average and the contention probe at the end of the run."""
    env["loadavg_at_end"] = _loadavg()
    env["contention_probe_us_at_end"] = contention_probe()


def environment() -> dict:
    import torch

    load = _loadavg()
    root = Path(__file__).resolve().parent.parent
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.rstrip()  # noqa: E731
    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()],
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "platform.processor()": platform.processor(),
        "cpu_model": cpu_model(),
        "os.cpu_count()": os.cpu_count(),
        "torch.get_num_threads()": torch.get_num_threads(),
        "loadavg_at_start": load,
        "contention_probe_us_at_start": contention_probe(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def md_table(headers: list, rows: list) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def env_md(env: dict) -> str:
    return "\n".join([
        "Command (from the repo root):",
        "",
        "```bash",
        env["command"],
        "```",
        "",
        f"- torch {env['torch']}, transformers {env.get('transformers')}, Python {env['python']}",
        f"- CPU: `platform.processor()` = {env['platform.processor()']!r}, model `{env['cpu_model']}`, "
        f"`os.cpu_count()` = {env['os.cpu_count()']}, torch threads = {env['torch.get_num_threads()']}",
        f"- load average (1/5/15 min) at start: {env['loadavg_at_start']}, at end: {env.get('loadavg_at_end')} "
        "(the machine is shared: other work may run in parallel, which inflates wall times)",
        f"- contention probe (us per small parallel torch op; ~30-100 idle, milliseconds when the cores "
        f"are taken): start {env['contention_probe_us_at_start']:.0f}, end {env.get('contention_probe_us_at_end', float('nan')):.0f}",
        f"- code: git HEAD {env['git_head']}, tracked files modified in the working tree: "
        f"{', '.join(env['git_modified']) or 'none'}",
        f"- date: {env['date']}",
    ])


def write_results(name: str, markdown: str, data: dict) -> tuple:
    RESULTS.mkdir(parents=True, exist_ok=True)
    md_path, json_path = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
    md_path.write_text(markdown.rstrip() + "\n")
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    return md_path, json_path
