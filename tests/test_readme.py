"""The README's Python example runs as written."""

import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
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


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in readme and "<!-- test-command -->" in ci
    command = readme.split("<!-- test-command -->")[1].split("```")[1]
    assert "pip install torch==2.13.0" in command and "pytest" in command
