"""The report as people read it: 80 columns without broken names or numbers, repeated layers
collapsed (every row with full), only real changes counted, optimizer families read from the
plan, and report.html a self-contained page."""

import re
from html.parser import HTMLParser

import pytest

import gpt_tied
import muprewrite
from muprewrite.plan import Edit, ParamPlan, Plan, PlanWarning
from muprewrite.report import Report
from muprewrite.report_collapse import collapse


@pytest.fixture(scope="module")
def tied():
    return muprewrite.mupify(gpt_tied.make_model, base=32, target=256, example_inputs=gpt_tied.example_inputs(),
                             materialize=False)


def expand(label: str) -> list:
    """'blocks.{0..1,4}.w' -> ['blocks.0.w', 'blocks.1.w', 'blocks.4.w'] (every combination)."""
    match = re.search(r"\{([\d.,]+)\}", label)
    if not match:
        return [label]
    values = []
    for part in match.group(1).split(","):
        low, _, high = part.partition("..")
        values += range(int(low), int(high or low) + 1)
    return [name for v in values for name in expand(label[:match.start()] + str(v) + label[match.end():])]


def param(role="hidden", lr=None, wd=None, before=0.02, after=0.02, zero_mean=True, aliases=()):
    lr = lr or {"adam": 1.0, "sgd": 1.0}
    return ParamPlan(shape=[64, 64], base_shape=[16, 16], infinite=[True, True], role=role,
                     init_std={"before": before, "after": after}, lr_mult=lr,
                     wd_mult=wd or {k: 1.0 / v for k, v in lr.items()}, aliases=list(aliases), zero_mean=zero_mean)


def plan_of(parameters: dict, edits=(), warnings=()) -> Plan:
    plan = Plan("mup", 16, 32, 64, {"weight_decay": "independent"}, parameters, list(edits), list(warnings))
    if hasattr(plan, "optimizers"):  # a plan that records the families it is shown for: all of the parameters'
        plan.optimizers = list(dict.fromkeys(f for p in parameters.values() for f in p.lr_mult))
    return plan


# ---- collapsing -------------------------------------------------------------------------------------

def test_collapse_several_indices_sparse_sets_and_differing_rows():
    names = [f"layers.{i}.experts.{j}.w" for i in range(4) for j in range(8) if not (i == 2 and j > 5)]
    groups = collapse(names, lambda n: n)
    assert [(g.label, len(g.members)) for g in groups] == [("layers.{0..1,3}.experts.{0..7}.w", 24),
                                                           ("layers.2.experts.{0..5}.w", 6)]
    differing = collapse([f"b.{i}.x" for i in range(6)], lambda n: n, key=lambda n: n in ("b.1.x", "b.3.x"))
    assert [g.label for g in differing] == ["b.{0,2,4..5}.x", "b.{1,3}.x"]
    for group in groups + differing:  # a label names exactly its members
        assert sorted(expand(group.label)) == sorted(group.members)


def test_collapse_keeps_aliases_with_their_own_index():
    items = [(f"enc.{i}.w", [f"dec.{i}.w"]) for i in range(3)] + [("enc.3.w", ["dec.9.w"])]
    groups = collapse(items, lambda x: x[0], extras=lambda x: x[1])
    assert [(g.label, g.extras) for g in groups] == [("enc.{0..2}.w", ["dec.{0..2}.w"]), ("enc.3.w", ["dec.9.w"])]


# ---- the terminal -------------------------------------------------------------------------------------

def test_80_columns_break_no_line_name_or_number(tied):
    text = tied.report.to_text(width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "blocks.{0..1}.attn.c_attn.weight ×2" in lines  # the collapsed name, whole, on a line of its own
    plan, shown = tied.plan, set()
    for line in lines:
        label = line.split(" ")[0]
        if label and any(name in plan.parameters for name in expand(label)):
            shown.update(expand(label))
    assert shown == set(plan.parameters)  # every parameter is named, collapsed or not, each name on one line
    measured = f"{tied.plan.parameters['wpe.weight'].init_std['before']:.3g}"  # a sampled std, ~0.02
    for number in ("0.08839 → 0.03125", "0.125", measured):
        assert number in text
    assert "linear_8" not in text.split("Graph diff")[0]
    assert "scaled_dot_product_attention_1" not in text.split("Graph diff")[0]


def test_80_columns_is_what_a_pipe_gets(tmp_path, capsys, monkeypatch):
    from muprewrite.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    assert main([str(gpt_tied.__file__), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80 and "blocks.{0..1}.ln_1.weight ×2" in out
    assert main([str(gpt_tied.__file__), "--no-verify", "--full"]) == 0
    full = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in full) <= 80
    assert "blocks.1.ln_1.weight" in full and not any("{" in line for line in full if line.startswith("blocks"))


def test_full_shows_every_row_and_the_graph_nodes(tied):
    text = tied.report.to_text(width=200, full=True)
    for name in tied.plan.parameters:
        assert re.search(rf"^{re.escape(name)}\b", text, re.M), name
    for edit in tied.plan.edits:
        assert edit.node in text.split("Warnings")[0]
    # nodes of warnings too; a repeated block's copy is named by its representative's node, in the copy
    assert "scaled_dot_product_attention@blocks.1.attn" in text.split("Graph diff")[0]
    assert "more hunk" not in text
    every_block = muprewrite.mupify(gpt_tied.make_model, base=32, target=256, share_blocks=False,
                                    example_inputs=gpt_tied.example_inputs(), materialize=False, verify_width=False)
    assert "more hunk" in every_block.report.to_text(width=200)  # the diff of every block is cut short
    assert "more hunk" not in every_block.report.to_text(width=200, full=True)


def test_edits_and_warnings_are_named_by_module_and_op(tied):
    text = tied.report.to_text(width=120)
    assert re.search(r"^blocks\.\{0\.\.1\}\.attn ×2 +attention_scale +sdpa +0\.08839 → 0\.03125", text, re.M)
    assert re.search(r"^\(root\) +readout_multiplier +linear on wte\.weight", text, re.M)
    assert "applies to: blocks.{0..1}.attn ×2 (scaled_dot_product_attention)" in text


def test_constant_inits_read_as_kept_not_zero(tied):
    text = tied.report.to_text(width=200)
    assert re.search(r"^blocks\.\{0\.\.1\}\.ln_1\.weight ×2 .*const, kept", text, re.M)
    assert re.search(r"^blocks\.\{0\.\.1\}\.ln_1\.bias ×2 .*zeros, kept", text, re.M)
    assert "0 → 0" not in text


# ---- what is counted, and the optimizer families ---------------------------------------------------

def test_only_real_changes_are_counted_per_family():
    sgd_only = {"adam": 1.0, "sgd": 4.0}
    plan = plan_of({"blocks.0.norm.weight": param("vector", sgd_only, before=0, after=0, zero_mean=False),
                    "blocks.1.norm.weight": param("vector", sgd_only, before=0, after=0, zero_mean=False),
                    "head.bias": param("vector")})
    report = Report(plan)
    assert "3 parameters: 0 change under adam, 2 under sgd." in report.to_text(width=200)
    assert "3 parameters: 0 change under adam, 2 under sgd." in report.to_markdown()
    assert "changed: a parameter whose init" in report.to_markdown()  # what was counted is said
    rescaled = plan_of({"w": param(after=0.01, lr={"adam": 0.25, "sgd": 1.0})})
    assert "1 parameter: 1 change under adam, 1 under sgd" in Report(rescaled).to_markdown()
    sp = plan_of({"w": param(), "b": param("vector")})
    assert "2 parameters: none changes under adam or sgd." in Report(sp).to_markdown()


def test_families_are_read_from_the_plan():
    lr = {"adam": 0.25, "sgd": 1.0, "lion": 0.25, "adafactor": 0.5}
    report = Report(plan_of({"w": param(lr=lr, after=0.01)}))
    markdown = report.to_markdown()
    for family in lr:
        assert f"LR× {family}" in markdown and f"WD× {family}" in markdown
    header = next(line for line in report.to_text(width=80).splitlines() if "LR×" in line)
    assert header.split("LR×")[1].split() == ["adam", "sgd", "lion", "adafactor"]
    assert "under lion" in markdown and "under adafactor" in markdown


def test_wd_columns_and_legend(tied):
    wide = tied.report.to_text(width=400)
    assert "WD× adam" in wide and "WD× = 1 / LR×: independent weight decay keeps lr × wd" in " ".join(wide.split())
    many = {f: 0.25 for f in ("adam", "sgd", "lion", "adafactor", "muon", "shampoo")}
    report = Report(plan_of({"blocks.0.attn.c_attn.weight": param(lr=many, after=0.01)}))
    narrow = report.to_text(width=80)  # the WD× columns would need a second line per row
    assert "WD×" not in narrow.split("Parameters")[1].split("\n∞")[0] and "(not shown; --full shows it)" in narrow
    assert "WD× adam" in report.to_text(width=80, full=True) and "WD× adam" in report.to_markdown()


def test_next_steps_name_the_calls(tied):
    text = tied.report.to_markdown()
    assert "model = muprewrite.apply_plan(make_model(256), result.plan, reinit=True)" in text  # materialize=False
    assert "muprewrite.param_groups(model, result.plan, lr=3e-3, weight_decay=0.1)" in text
    assert "result.save('muprewrite-out')" in text
    assert "muprewrite.apply_plan(make_model(256), 'muprewrite-out/plan.json')" in text


# ---- HTML --------------------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}


class Structure(HTMLParser):
    """Checks that tags nest and close; records tags, classes, ids and every attribute."""

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.attributes, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def values(self, attribute: str) -> list:
        return [v for _, k, v in self.attributes if k == attribute]


def parsed(html: str) -> Structure:
    structure = Structure()
    structure.feed(html)
    structure.close()
    assert structure.errors == [] and structure.stack == [], (structure.errors, structure.stack)
    return structure


def test_html_is_a_self_contained_page(tied):
    page = tied.report.to_html()
    structure = parsed(page)
    assert page.startswith("<!DOCTYPE html>") and structure.tags[:3] == ["html", "head", "meta"]
    ids = structure.values("id")
    for section in ("summary", "parameters", "edits", "warnings", "graph-diff", "verification", "next-steps"):
        assert section in ids
    for name in tied.plan.parameters:  # collapsed rows list their members
        assert f"<code>{name}</code>" in page, name
    assert "<details>" in page and "<table>" in page and "<th" in page
    assert not {"script", "link", "img", "iframe"} & set(structure.tags)
    assert "src=" not in page and "http" not in page.lower().replace("http-equiv", "") and "@import" not in page
    diff_classes = structure.values("class")
    assert "add" in diff_classes and "del" in diff_classes and "hunk" in diff_classes
    assert "<pre" not in page.split('id="parameters"')[1].split("</section>")[0]  # a table, not a text dump


def test_html_escapes_text_and_jupyter_shows_the_body():
    warning = PlanWarning("odd", "a <b>message</b> & more", "ref <x>", ["blocks.0.w"])
    report = Report(plan_of({"blocks.0.w": param(), "blocks.1.w": param()}, warnings=[warning]))
    page = report.to_html()
    parsed(page)
    assert "a &lt;b&gt;message&lt;/b&gt; &amp; more" in page and "<b>message" not in page
    fragment = report._repr_html_()
    parsed(fragment)
    assert "<html" not in fragment and fragment in page


def test_markdown_collapses_and_names_everything(tied):
    markdown = tied.report.to_markdown()
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    named = {n for line in rows for n in expand(line.split("`")[1])}
    assert set(tied.plan.parameters) <= named
    assert len([r for r in rows if "×2" in r]) >= 12 and "linear_8" not in markdown.split("## Graph diff")[0]
    table = markdown.split("## Parameters")[1].split("\n\n")[1].splitlines()
    assert len({line.count("|") for line in table}) == 1  # every row has the header's columns


def test_edits_collapse_only_when_they_agree():
    edits = [Edit("attention_scale", f"blocks.{i}.attn", f"sdpa_{i}", 0.125, 0.0625 if i != 2 else 0.03125,
                  "call_interception", "sdpa", 0, "scale_kwarg") for i in range(4)]
    text = Report(plan_of({"w": param()}, edits=edits)).to_text(width=200)
    assert re.search(r"^blocks\.\{0\.\.1,3\}\.attn ×3 ", text, re.M)
    assert re.search(r"^blocks\.2\.attn +attention_scale", text, re.M)


def test_command_line_next_steps_run_as_written(tmp_path, capsys, monkeypatch):
    from muprewrite.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    assert main([str(gpt_tied.__file__), "--no-verify", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    (block,) = re.findall(r"```python\n(.*?)```", (tmp_path / "report.md").read_text(), flags=re.S)
    assert f"plan = muprewrite.Plan.load('{tmp_path}/plan.json')" in block
    assert f"load_model_file({str(gpt_tied.__file__)!r})" in block
    pasted = "\n".join(line[2:] for line in out.split("Next steps\n")[1].splitlines()[2:])
    for code, source in ((block, "report.md"), (pasted, "the terminal")):  # the terminal's wrapped lines too
        namespace = {}
        exec(compile(code, source, "exec"), namespace)
        lrs = sorted({group["lr"] for group in namespace["optimizer"].param_groups})
        assert lrs == pytest.approx([3e-3 / 8, 3e-3]), source  # hidden weights at lr / m, the rest at lr
