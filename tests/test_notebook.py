"""In a real Jupyter kernel (nbclient): the result renders once, as the report's HTML with a
short text repr, and result.save() displays nothing."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).parent.parent


def run_notebook(cells: list, folder: Path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()
    return notebook.cells


def test_result_renders_once_and_save_displays_nothing(tmp_path):
    out = tmp_path / "out"
    compile_cell, save_cell, report_cell = run_notebook([
        f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'examples')!r}]\n"
        "import muprewrite\nfrom mlp import make_model, example_inputs\n"
        "result = muprewrite.mupify(make_model, base=32, target=128, example_inputs=example_inputs())\nresult",
        f"paths = result.save({str(out)!r})",
        "result.report",
    ], tmp_path)
    outputs = [o for o in compile_cell.outputs if o.output_type != "stream" or "report" in o.get("text", "")]
    assert [o.output_type for o in outputs] == ["execute_result"]  # one rendering, nothing printed besides
    data = outputs[0]["data"]
    html, text = data["text/html"], data["text/plain"]
    assert html.count('class="muprewrite-report"') == 1 and "<html" not in html and "fc2.weight" in html
    assert text.startswith("Result(mup, widths 32/64/128") and "\n" not in text
    assert save_cell.outputs == []
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "report.html", "report.md"]
    (report,) = report_cell.outputs
    assert report["data"]["text/html"].count('class="muprewrite-report"') == 1
