"""The project's modules in layers (docs/design.md, "Layers"): imports run only downward, and no
module imports one that imports it back, not even through a lazy import inside a function."""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
# lowest first; a module imports only from its own layer or the ones above it in this list
LAYERS = {
    "vocabulary": "errors plan rules widths options optimizers passes.op_registry passes.ops",
    "analysis": "passes.*",  # every pass not named in a later layer (capture, dims, roles, attention, ...)
    "planning": "passes.decide passes.foldable passes.fold_walk passes.lint passes.stamp",
    "apply": "passes.realize passes.rewrite passes.verify passes.emit passes.fold",
    "pipeline and report": "pipeline loading hf hf.* report report_*",
    "api": "api coordcheck coordcheck_depth coordcheck_result",
    "commands": "cli cli_common coordcheck_cli fold_cli muprewrite passes",
}


def modules() -> dict:
    """'muprewrite.passes.dims' -> its file, for every module of the project."""
    found = {}
    for path in [*ROOT.glob("muprewrite/**/*.py"), *ROOT.glob("passes/*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        parts = ["muprewrite", *parts] if parts[0] == "passes" else parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer_of(module: str) -> int:
    short = module.removeprefix("muprewrite.") if module != "muprewrite" else "muprewrite"
    patterns = [(pattern, rank) for rank, names in enumerate(LAYERS.values()) for pattern in names.split()]
    for pattern, rank in patterns:  # a module named outright, then a family ("report_*")
        if short == pattern:
            return rank
    for pattern, rank in patterns:
        if pattern.endswith("*") and short.startswith(pattern[:-1]):
            return rank
    raise AssertionError(f"module {module} is in no layer of tests/test_layers.py (and docs/design.md): place it")


def imports(known: dict) -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                     for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) not in type_only:
                graph.add_edges_from((name, target) for target in _targets(node, package, known) if target != name)
    return graph


def _targets(node: ast.AST, package: str, known: dict) -> list:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
    target = ".".join(base + ([node.module] if node.module else []))
    submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
    # `from . import ops` imports the submodule; `from .errors import X` the module itself
    return submodules if len(submodules) == len(node.names) else [t for t in [target, *submodules] if t in known]


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(imports(modules())))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_imports_run_downward():
    graph = imports(modules())
    upward = [f"{a} ({list(LAYERS)[layer_of(a)]}) imports {b} ({list(LAYERS)[layer_of(b)]})"
              for a, b in graph.edges if layer_of(b) > layer_of(a)]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_the_checker_sees_a_cycle(tmp_path):
    """The checker itself: a lazy import inside a function that closes a loop is a cycle."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    known = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    assert list(nx.simple_cycles(imports(known))) in ([["pkg.a", "pkg.b"]], [["pkg.b", "pkg.a"]])
