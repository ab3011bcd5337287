"""Every plan muprewrite makes on a fixed set of models, written as JSON: run it on two commits and
compare, to show that a refactor changed no decision (issue 23's "plans identical").

The set: every bundled example (its BASE_WIDTH/TARGET_WIDTH, verification on), the Hugging Face
types of tests/test_hf_zoo_sample.py (needs transformers) and, with `--third-party`, the models of
benchmarks/third_party (needs their packages: the venv of benchmarks/README.md).

    python benchmarks/plan_snapshot.py --out /tmp/plans-new [--third-party]
    python benchmarks/plan_snapshot.py --compare /tmp/plans-old /tmp/plans-new

A model that raises is recorded by its error's one line (a refusal must stay the same refusal).
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]


class ThisCheckout(importlib.abc.MetaPathFinder):
    """Imports muprewrite (and muprewrite.passes, which lives in passes/) from this checkout, whatever
    an editable install elsewhere maps them to: a snapshot of an old commit runs the old code."""

    PACKAGES = {"muprewrite": ROOT / "muprewrite", "muprewrite.passes": ROOT / "passes"}

    def find_spec(self, name, path=None, target=None):
        folder = self.PACKAGES.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


sys.meta_path.insert(0, ThisCheckout())


def examples() -> dict:
    return {f"example:{path.stem}": path for path in sorted((ROOT / "examples").glob("*.py"))
            if "def make_model(" in path.read_text()}  # nanogpt.py is the GPT the examples share


def hf_types() -> list:
    from test_hf_zoo_sample import SAMPLE

    return [f"hf:{name}" for name in sorted(SAMPLE)]


def third_party() -> list:
    from third_party import REGISTRY

    return [f"tp:{name}" for name in sorted(REGISTRY)]


def snapshot(key: str) -> dict:
    """The plan (as JSON) for one model, or the error it stopped with."""
    import torch

    import muprewrite
    from muprewrite.loading import load_model_file

    kind, name = key.split(":", 1)
    torch.manual_seed(0)
    if kind == "example":
        factory, module = load_model_file(str(examples()[key]))
        inputs = module.example_inputs() if hasattr(module, "example_inputs") else None
        run = dict(factory=factory, base=module.BASE_WIDTH, target=module.TARGET_WIDTH, example_inputs=inputs)
    elif kind == "hf":
        import hf_zoo

        built = hf_zoo.build_model_type(name, "head_dim", forward="real")
        base, delta, target = built["widths"]
        run = dict(factory=built["factory"], base=base, delta=delta, target=target, example_inputs=built["inputs"])
    else:
        from third_party import REGISTRY

        spec = REGISTRY[name]
        base, delta, target = spec.widths
        run = dict(factory=spec.make_model, base=base, delta=delta, target=target, example_inputs=spec.inputs())
    try:
        return muprewrite.mupify(**run, materialize=False).plan.to_dict()
    except Exception as exc:  # noqa: BLE001  a refusal or a crash is part of the snapshot
        return {"error": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else ""}


def write(out: Path, keys: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for key in keys:  # one interpreter per model: nothing one model leaves behind reaches the next
        done = subprocess.run([sys.executable, __file__, "--worker", key], capture_output=True, text=True)
        text = done.stdout if done.returncode == 0 else json.dumps({"worker": done.stderr[-2000:]})
        (out / f"{key.replace(':', '_')}.json").write_text(text)
        print(key, "error" if '"error"' in text[:200] else "plan", flush=True)


def compare(old: Path, new: Path) -> int:
    """Plans equal but for where each checkout lies (a note names a source file by its path)."""
    names = sorted({p.name for p in old.glob("*.json")} | {p.name for p in new.glob("*.json")})
    differing = [name for name in names if not (old / name).exists() or not (new / name).exists()
                 or _read(old / name) != _read(new / name)]
    print(f"{len(names) - len(differing)} of {len(names)} plans identical" + "".join(f"\n  differs: {n}" for n in differing))
    return 1 if differing else 0


def _read(path: Path):
    return json.loads(CHECKOUT_PATH.sub("<checkout>/", path.read_text()))


CHECKOUT_PATH = re.compile(r"/(?:[\w.+-]+/)*?(?=(?:benchmarks|examples|muprewrite|passes|tests)/)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--third-party", action="store_true")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(snapshot(args.worker), indent=1, sort_keys=True, default=str))
        return 0
    if args.compare:
        return compare(*args.compare)
    keys = list(examples()) + hf_types() + (third_party() if args.third_party else [])
    write(args.out, keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
