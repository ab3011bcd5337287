"""The pipeline is declared once (muprewrite/pipeline.py), and docs/design.md lists it as it is."""
import re
from pathlib import Path

import torch

import mlp
import muprewrite
from muprewrite import pipeline
from muprewrite.widths import Widths

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"


def test_design_lists_the_declared_stages_in_order():
    section = DESIGN.read_text().split("## The pipeline as declared")[1].split("\n## ")[0]
    listed = re.findall(r"^\d+\. `(\w+)` —", section, flags=re.MULTILINE)
    assert listed == [stage.name for stage in pipeline.COMPILATION]
    assert pipeline.COMPILATION[:len(pipeline.ANALYSIS)] == pipeline.ANALYSIS


def test_the_observer_times_every_stage_and_mupify_is_the_pipeline():
    widths = Widths(mlp.BASE_WIDTH, 2 * mlp.BASE_WIDTH, 4 * mlp.BASE_WIDTH)
    observer = pipeline.Observer()
    torch.manual_seed(0)
    compiled = pipeline.compile(pipeline.Compilation(mlp.make_model, mlp.example_inputs(), widths,
                                                     keep_delta_build=True), observer)
    assert list(observer.timings) == [stage.name for stage in pipeline.COMPILATION]
    assert all(seconds >= 0 for seconds in observer.timings.values())
    torch.manual_seed(0)
    result = muprewrite.mupify(mlp.make_model, base=widths.base, target=widths.target,
                               example_inputs=mlp.example_inputs(), materialize=False)
    assert result.plan.to_dict() == compiled.plan.to_dict()
    assert result.report.verification == compiled.verification
