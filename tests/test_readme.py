"""The README's Python example runs as written."""

import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent


def python_block(section: str) -> str:
    """The ```python block of a README section."""
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return block


def test_readme_python_example_runs(tmp_path, monkeypatch):
    block = python_block("Python")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "muprewrite-out" / "plan.json").is_file()
    x = torch.randn(2, 32)
    namespace["model"].eval(), namespace["restored"].eval()
    assert torch.equal(namespace["model"](x), namespace["restored"](x))
    assert len(namespace["groups"]) > 1
    sys.modules.pop("examples.mlp", None)


def test_readme_fold_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {}
    exec(compile(python_block("Fold to SP"), "README.md", "exec"), namespace)
    ids = namespace["example_inputs"]()
    for name in ("mup_model", "sp_model", "plain", "again"):
        namespace[name].eval()
    want = namespace["mup_model"](*ids)
    assert (namespace["plain"](*ids) - want).abs().max() <= 1e-5 * want.abs().max()
    assert torch.equal(namespace["again"](*ids), want)
    sys.modules.pop("examples.einsum_attention", None)


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in readme and "<!-- test-command -->" in ci
    command = readme.split("<!-- test-command -->")[1].split("```")[1]
    assert "pip install torch==2.13.0" in command and "pytest" in command


def test_readme_depth_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository's root
    namespace = {}
    exec(compile(python_block("Depth transfer (CompleteP)"), "README.md", "exec"), namespace)
    deep = namespace["deep"]
    assert deep.plan.depth["multiplier"] == 4 and len(namespace["groups"]) > 1
    assert sum(e.kind == "branch_multiplier" for e in deep.plan.edits) == 16
