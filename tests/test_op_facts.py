"""Every fact about an op lives in the registry (passes/op_registry.py): no other pass names a kind of op.

Two ways a pass could: a module-level collection of op names (a set, tuple, list or dict of
strings that are aten ops), or an op's name (`ops.op_name(node)`, or a variable holding it) looked
up in a literal collection: a kind of op. (`op_name(node) == "mul"` names one op, not a kind; allowed.) Both are found in the source, so a new op fact that lands in a
pass instead of the registry fails here."""

import ast
from pathlib import Path

import torch

PASSES = Path(__file__).resolve().parent.parent / "passes"


def is_op_name(text: str) -> bool:
    return text.isidentifier() and (text == "getitem" or hasattr(torch.ops.aten, text))


def strings(node) -> list:
    nodes = node if isinstance(node, list) else [node]
    return [n.value for root in nodes if root is not None for n in ast.walk(root)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def is_op_name_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "op_name"


def op_name_variables(tree: ast.AST) -> set:
    return {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and is_op_name_call(node.value)
            for target in node.targets if isinstance(target, ast.Name)}


def op_facts_in(path: Path) -> list:
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:  # module-level collections of op names
        value = getattr(node, "value", None)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(value, (ast.Set, ast.Tuple, ast.List, ast.Dict)):
            listed = strings(value.keys if isinstance(value, ast.Dict) else value)  # a dict: its keys
            names = [s for s in listed if is_op_name(s)]
            if names and len(names) * 2 >= len(listed):  # mostly op names: not a list of words that has one
                found.append(f"{path.name}:{node.lineno} a collection of op names {names}")
    variables = op_name_variables(tree)
    for node in ast.walk(tree):  # an op's name looked up in a literal collection
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            (collection,) = node.comparators
            if (is_op_name_call(node.left) or (isinstance(node.left, ast.Name) and node.left.id in variables)) \
                    and isinstance(collection, (ast.Set, ast.Tuple, ast.List)) and strings(collection):
                found.append(f"{path.name}:{node.lineno} an op name looked up in {strings(collection)}")
    return found


def test_no_pass_but_the_registry_names_an_op():
    found = [fact for path in sorted(PASSES.glob("*.py")) if path.name != "op_registry.py" for fact in op_facts_in(path)]
    assert not found, "op facts outside passes/op_registry.py:\n" + "\n".join(found)
