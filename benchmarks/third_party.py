"""muprewrite on real model code from PyPI packages other than transformers.

Each model of `benchmarks/third_party/` (one module per package; `REGISTRY`: name -> Spec with
the package and a small wrapper `make_model(width)` building the package's class with 2 layers,
a small vocabulary and random weights, nothing downloaded) is judged in a fresh subprocess with a
timeout by `benchmarks/third_party/judge.py` (see its docstring for the checks and the `mup`
oracle). Outcomes: correct / refused (a MuRewriteError: its one line) / crash (any other
exception or the timeout: type, message, last frame inside muprewrite) / wrong (the plan fails a
check) / build (the wrapper or the package fails at base width; not counted against muprewrite).

Install (a venv of its own, outside the repository; torch first, the CPU build, and pinned):

    python3 -m venv /work/venv-tp && . /work/venv-tp/bin/activate && pip install torch==2.13.0 && \\
    pip install -c benchmarks/third_party_constraints.txt -e "/work/main[test]" x-transformers \\
        performer-pytorch linear-attention-transformer reformer-pytorch local-attention nystrom-attention \\
        st-moe-pytorch mixture-of-experts mambapy xlstm mlp-mixer-pytorch g-mlp-pytorch fair-esm \\
        rtdl-revisiting-models tab-transformer-pytorch pytorch-tabnet torch-geometric egnn-pytorch \\
        bs-roformer perceiver-pytorch nGPT-pytorch vit-pytorch && \\
    pip uninstall -y torchvision && pip install --no-deps mup==1.0.0

(vit-pytorch pulls torchvision, which does not load with the CPU torch: it is uninstalled and
vit-pytorch, whose package imports torchvision, has no model here; x-transformers' ViT wrapper
stands in. mambapy's Mamba-2 imports mamba_ssm (triton): only its Mamba and Jamba are here.)

    /work/venv-tp/bin/python benchmarks/third_party.py                      # every model (~10 min)
    /work/venv-tp/bin/python benchmarks/third_party.py --only xt_decoder,ngpt --out /tmp/tp

Writes OUT/third_party.json and OUT/third_party.md (default OUT: benchmarks/results).
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import env_md, environment, mark_end, md_table  # noqa: E402

OUTCOMES = ("correct", "refused", "crash", "wrong", "build")


def run_in_subprocess(name: str, timeout: float) -> dict:
    """One model in a fresh interpreter (a crash or a hang takes only that model down)."""
    command = [sys.executable, __file__, "--worker", name]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        from third_party import REGISTRY
        from third_party.judge import package_version

        spec = REGISTRY[name]
        return {"name": name, "package": spec.package, "version": package_version(spec.package), "outcome": "crash",
                "message": f"Timeout: more than {timeout:g} s", "seconds": time.perf_counter() - start}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "outcome": "crash", "message": f"worker exited with status {proc.returncode}: {tail}"[:300],
                "seconds": time.perf_counter() - start}


def run_all(names: list, args) -> list:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results, counts = [], collections.Counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[counts]}")) as progress:
        task = progress.add_task("third party", total=len(names), counts="")
        for name in names:
            progress.update(task, description=f"{name:<26}")
            record = run_in_subprocess(name, args.timeout)
            results.append(record)
            counts[record["outcome"]] += 1
            progress.update(task, advance=1, counts=" ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))
    return results


def details(record: dict) -> str:
    if record["outcome"] == "wrong":
        return "; ".join(record.get("failures", []))
    text = record.get("message", "")
    if record.get("frame") and record["outcome"] == "crash":
        text += f" [at {record['frame']}]"
    return text.replace("|", "\\|").replace("\n", " ")


def mup_cell(record: dict) -> str:
    oracle = record.get("mup")
    if not oracle:
        return ""
    if oracle.get("status") != "compared":
        return oracle["status"].split(":")[0]
    n = len(oracle["disagreements"])
    return f"agrees ({oracle['parameters']})" if not n else f"{n} of {oracle['parameters']} differ"


def markdown(results: list, env: dict, args) -> str:
    counts = collections.Counter(r["outcome"] for r in results)
    packages = sorted({(r.get("package", "?"), r.get("version", "?")) for r in results})
    rows = [[r.get("package", ""), r.get("version", ""), r["name"], r["outcome"],
             f"{r['seconds']:.1f}" if "seconds" in r else "", mup_cell(r), details(r)] for r in results]
    disagreements = [[r["name"], d.replace("|", "\\|")] for r in results
                     for d in (r.get("mup") or {}).get("disagreements", [])]
    scales = [[r["name"], r.get("scales", ""), "/".join(map(str, r.get("widths", []))), r.get("note", "")]
              for r in results]
    return "\n\n".join([
        "# third_party: muprewrite on models from PyPI packages other than transformers",
        f"{len(results)} models from {len({p for p, _ in packages})} packages; see the docstrings of "
        "`benchmarks/third_party.py` and `benchmarks/third_party/judge.py` for the checks and the install command.",
        f"Command: `{' '.join(['python', *sys.argv])}`",
        env_md(env),
        "## Summary",
        md_table(["outcome", "models"], [[k, counts[k]] for k in OUTCOMES]),
        "## Packages",
        md_table(["package", "version"], [list(p) for p in packages]),
        "## Per model",
        md_table(["package", "version", "model", "outcome", "seconds", "mup oracle", "message"], rows),
        "## mup disagreements (to inspect; not counted as wrong)",
        md_table(["model", "parameter: mup vs plan"], disagreements) if disagreements else "none",
        "## What the width scales",
        md_table(["model", "scales", "base/delta/target", "note"], scales),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated model names (default: every model of the registry)")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for third_party.json and .md")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per model (default 180)")
    parser.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        from third_party.judge import check_model

        torch.set_num_threads(1)
        print(json.dumps(check_model(args.worker)))
        return
    from third_party import REGISTRY
    from third_party.judge import package_version

    names = args.only.split(",") if args.only else list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown models: {', '.join(unknown)} (known: {', '.join(REGISTRY)})")
    env = environment()
    env["packages"] = {p: package_version(p) for p in sorted({REGISTRY[n].package for n in names} | {"mup"})}
    results = run_all(names, args)
    mark_end(env)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "third_party.md").write_text(markdown(results, env, args).rstrip() + "\n")
    (out / "third_party.json").write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    print(f"wrote {out / 'third_party.md'}\nwrote {out / 'third_party.json'}")


if __name__ == "__main__":
    main()
