"""capture: the fallbacks real models need (eval mode, fake tensors on CPU) and errors that name the cause."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from muprewrite.cli import EXIT_USER_ERROR, main
from muprewrite.errors import CaptureError
from muprewrite.passes.capture import Captures, capture, export_model, export_with_fallbacks
from muprewrite.widths import Widths

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from expert_hit_loop import ExpertHitLoop  # noqa: E402  (also the CLI fixture)

WIDTHS = Widths(32, 64, 128)
X = (torch.randn(4, 8),)
# 64 tokens over 4 experts, seeded: no expert gets a single token (a size-1 guard draft export cannot decide)
ROUTED = (torch.randn(64, 8, generator=torch.Generator().manual_seed(0)),)

_LIBRARY = torch.library.Library("muprewrite_capture_test", "DEF")
_LIBRARY.define("opaque(Tensor x) -> Tensor")
_LIBRARY.impl("opaque", lambda x: x.cumsum(-1), "CPU")


def line_of(cls, text: str) -> str:
    """'file:line' of the first line of `cls`'s source containing `text`."""
    lines, first = inspect.getsourcelines(cls)
    offset = next(i for i, line in enumerate(lines) if text in line)
    return f"{inspect.getsourcefile(cls)}:{first + offset}"


def linear_weights(program) -> list:
    """Parameter names used as the weight of a linear node, in graph order."""
    names = program.graph_signature.inputs_to_parameters
    return [names[n.args[1].name] for n in program.graph.nodes
            if n.op == "call_function" and n.target is torch.ops.aten.linear.default]


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inp, self.hid, self.out = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 2)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


class LayerDrop(nn.Module):
    """Skips each layer with probability p in train mode (Fan et al. 2019), a data-dependent branch."""

    def __init__(self, width, p=0.5):
        super().__init__()
        self.inp, self.out = nn.Linear(8, width), nn.Linear(width, 2)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(3))
        self.p = p

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            if self.training and torch.rand([]) < self.p:
                continue
            h = h + torch.relu(layer(h))
        return self.out(h)


class ExpertListLoop(ExpertHitLoop):
    """The same loop written over `.tolist()` of the expert ids with tokens."""

    def forward(self, x):
        h = self.inp(x)
        counts = torch.bincount(self.router(h).argmax(-1), minlength=len(self.experts))
        y = torch.zeros_like(h)
        for e in torch.nonzero(counts).flatten().tolist():
            y = y + self.experts[e](h)
        return self.out(y)


class StaticExpertLoop(ExpertHitLoop):
    """The fix the capture error advises: loop over every expert; one with no tokens adds nothing."""

    def forward(self, x):
        h = self.inp(x)
        mask = F.one_hot(self.router(h).argmax(-1), len(self.experts)).permute(1, 0)
        y = torch.zeros_like(h)
        for e in range(len(self.experts)):
            tokens = torch.where(mask[e])[0]
            y = y.index_add(0, tokens, self.experts[e](h[tokens]))
        return self.out(y)


class AutocastOnInputDevice(MLP):
    """`torch.autocast(device_type=x.device.type)`: "meta" is no autocast device type."""

    def forward(self, x):
        h = torch.relu(self.inp(x))
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            h = torch.relu(self.hid(h))
        return self.out(h.float())


class CpuOnlyKernel(MLP):
    """A forward that refuses any device but CPU (a CPU-only fused path)."""

    def forward(self, x):
        if x.device.type != "cpu":
            raise RuntimeError(f"this kernel runs on CPU only, got {x.device}")
        return super().forward(x)


class CudaOnlyKernel(MLP):
    """A forward that needs CUDA: neither meta nor CPU can trace it."""

    def forward(self, x):
        if x.device.type != "cuda":
            raise RuntimeError(f"the fused kernel needs CUDA, got {x.device}")
        return super().forward(x)


class CopiesToCpu(MLP):
    """Positions built on a fixed device: a meta activation cannot meet a CPU tensor."""

    def forward(self, x):
        positions = torch.arange(x.shape[0]).to("cpu", torch.float32)
        return super().forward(x) + positions[:, None]


class CpuBufferAtInit(MLP):
    """A table computed at init and moved to CPU: `.cpu()` of a meta tensor has no data to copy."""

    def __init__(self, width):
        super().__init__(width)
        self.register_buffer("offset", (torch.arange(2) / 10.0).cpu())

    def forward(self, x):
        return super().forward(x) + self.offset


class Branchy(MLP):
    """A branch on a tensor value in every mode."""

    def forward(self, x):
        h = self.inp(x)
        if h.sum() > 0:
            h = h.relu()
        return self.out(self.hid(h))


class OpaqueOp(MLP):
    """A custom op with no fake (meta) kernel: export cannot run it without data."""

    def forward(self, x):
        return self.out(torch.ops.muprewrite_capture_test.opaque(self.hid(self.inp(x))))


class ThreeHeads(nn.Module):
    """Splits width into 3 heads: valid at 48 and 96, not at 128."""

    def __init__(self, width):
        super().__init__()
        self.inp, self.out = nn.Linear(8, width), nn.Linear(width // 3, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h.view(h.shape[0], 3, h.shape[-1] // 3)).sum(1)


def test_plain_model_is_captured_on_meta_in_train_mode_without_notes():
    captures = capture(MLP, X, WIDTHS)
    assert (captures.mode, captures.device, captures.notes) == ("train", "meta", [])
    assert linear_weights(captures.programs["target"]) == ["inp.weight", "hid.weight", "out.weight"]


def test_captures_keeps_its_three_field_constructor():
    captures = Captures(widths=WIDTHS, programs={}, aliases={})
    assert (captures.mode, captures.device, captures.notes) == ("train", "meta", [])


def test_layerdrop_is_captured_in_eval_mode_with_every_layer():
    captures = capture(LayerDrop, X, WIDTHS)
    assert captures.mode == "eval" and captures.device == "meta"
    [note] = captures.notes
    assert "eval mode" in note and line_of(LayerDrop, "torch.rand([])") in note and "\n" not in note
    expected = ["inp.weight", "layers.0.weight", "layers.1.weight", "layers.2.weight", "out.weight"]
    for program in captures.programs.values():
        assert linear_weights(program) == expected


@pytest.mark.parametrize("model, line", [(ExpertHitLoop, "for expert_idx in expert_hit:"),
                                         (ExpertListLoop, ".tolist():")])
def test_an_expert_hit_loop_is_traced_on_real_tensors_naming_the_loop(model, line):
    """torch.export refuses the loop in train and eval mode; the example's own routing then decides it."""
    torch.manual_seed(0)
    captures = capture(model, ROUTED, WIDTHS)
    assert captures.device == "cpu"
    assert f"in module '(root)' ({model.__name__}), at {line_of(model, line)}" in captures.branches
    [note] = [n for n in captures.notes if "real tensors" in n]
    assert line_of(model, line) in note and "\n" not in note


def test_a_real_trace_that_loses_a_real_value_is_tried_again(monkeypatch):
    """torch 2.13's draft export fails now and then on the same model and inputs (a data-dependent size's
    real value lost in a storage-offset check); capture traces again."""
    draft_export, calls = torch.export.draft_export, []

    def losing_once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise RuntimeError("Could not guard on data-dependent expression Ne(u2, 0) (unhinted: Ne(u2, 0)). "
                               "Caused by: (_subclasses/fake_utils.py:205 in _check_fake_real_tensors)")
        return draft_export(*args, **kwargs)

    monkeypatch.setattr(torch.export, "draft_export", losing_once)
    torch.manual_seed(0)
    captures = capture(ExpertHitLoop, ROUTED, WIDTHS)
    assert captures.device == "cpu" and captures.branches is not None
    assert calls[0] is calls[1] and len(calls) >= 4  # the base model traced again, then delta and target


def test_the_advised_static_expert_loop_captures_every_expert():
    captures = capture(StaticExpertLoop, X, WIDTHS)
    assert captures.mode == "train" and captures.notes == []
    assert linear_weights(captures.programs["target"]) == [
        "inp.weight", "router.weight", "experts.0.weight", "experts.1.weight", "experts.2.weight",
        "experts.3.weight", "out.weight"]


@pytest.mark.parametrize("model, reason", [
    (AutocastOnInputDevice, "unsupported autocast device_type 'meta'"),
    (CpuOnlyKernel, "this kernel runs on CPU only, got meta"),
    (CopiesToCpu, "meta and cpu"),
])
def test_meta_device_failures_fall_back_to_fake_tensors_on_cpu(model, reason):
    captures = capture(model, X, WIDTHS)
    assert captures.device == "fake-cpu" and captures.mode == "train"
    [note] = captures.notes
    assert "fake tensors" in note and reason in note and "\n" not in note
    for program in captures.programs.values():
        vals = [n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"]
        assert all(v.device.type == "cpu" for v in vals)
    shapes = {n.name: tuple(n.meta["val"].shape) for n in captures.programs["target"].graph.nodes if n.op == "placeholder"}
    assert shapes["p_hid_weight"] == (128, 128)


def test_factory_that_fails_on_meta_is_built_under_fake_tensors():
    captures = capture(CpuBufferAtInit, X, WIDTHS)
    assert captures.device == "fake-cpu"
    [note] = captures.notes
    assert note.startswith("built on CPU under fake tensors (no memory): building on the meta device failed")


def test_fake_tensor_fallback_allocates_no_parameter_memory():
    """16 layers of 4096 x 4096 would be 1 GiB of float32; the capture must stay far below it."""
    script = textwrap.dedent("""
        import resource, torch
        from torch import nn
        from muprewrite.passes.capture import capture
        from muprewrite.widths import Widths

        class Deep(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.inp, self.out = nn.Linear(8, width), nn.Linear(width, 2)
                self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(16))

            def forward(self, x):
                h = self.inp(x)
                with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                    for layer in self.layers:
                        h = torch.relu(layer(h))
                return self.out(h.float())

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        captures = capture(Deep, (torch.randn(2, 8),), Widths(1024, 2048, 4096))
        assert captures.device == "fake-cpu", captures.notes
        print(before // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    before_mib, peak_mib = map(int, out.split())
    assert peak_mib - before_mib < 256, f"peak RSS grew from {before_mib} to {peak_mib} MiB"


def test_a_data_dependent_branch_is_traced_on_real_tensors_naming_the_line(capfd):
    captures = capture(Branchy, X, WIDTHS)
    assert f"in module '(root)' (Branchy), at {line_of(Branchy, 'if h.sum() > 0:')}: `if h.sum() > 0:`" \
        in captures.branches
    out, err = capfd.readouterr()
    assert out == "" and err == ""


_GENERATED = {}
exec("def positive(h):\n    return bool(h.sum() > 0)\n", _GENERATED)  # code made at run time (blt's)


class BranchyInGeneratedCode(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.proj = nn.Linear(8, width)

    def forward(self, x):
        h = self.proj(x)
        if _GENERATED["positive"](h):
            return h
        return -h


def test_a_branch_in_generated_code_is_located_at_the_users_line_that_called_it():
    message = capture(BranchyInGeneratedCode, X, WIDTHS).branches
    assert "<string>" not in message
    assert f"at {line_of(BranchyInGeneratedCode, 'if _GENERATED')}" in message


def test_op_without_fake_kernel_error_names_the_op_and_register_fake():
    with pytest.raises(CaptureError) as info:
        capture(OpaqueOp, X, WIDTHS)
    message = str(info.value)
    assert "muprewrite_capture_test.opaque" in message and "register_fake" in message
    assert line_of(OpaqueOp, "torch.ops.muprewrite_capture_test.opaque") in message and "\n" not in message


@pytest.mark.parametrize("inputs", [(torch.randn(4, 7),), (torch.randn(4, 8), torch.randn(4, 8))],
                         ids=["wrong-feature-size", "extra-argument"])
def test_example_inputs_that_do_not_fit_are_named_as_such(inputs):
    with pytest.raises(CaptureError, match=r"the example inputs do not fit the model") as info:
        capture(MLP, inputs, WIDTHS)
    assert "\n" not in str(info.value)


def test_failure_at_a_larger_width_only_blames_the_width():
    with pytest.raises(CaptureError) as info:
        capture(ThreeHeads, X, Widths(48, 96, 128))
    message = str(info.value)
    assert "could not capture ThreeHeads at width 128 although it captures at base width 48" in message
    assert line_of(ThreeHeads, "h.view(") in message and "divisible" in message


def test_device_failure_on_meta_and_cpu_gives_device_advice():
    with pytest.raises(CaptureError) as info:
        capture(CudaOnlyKernel, X, WIDTHS)
    message = str(info.value)
    assert "(on the meta device, on CPU under fake tensors and with real tensors)" in message
    assert "the fused kernel needs CUDA" in message and "depends on the device" in message
    assert line_of(CudaOnlyKernel, "raise RuntimeError") in message


def test_export_model_falls_back_to_eval_and_leaves_the_model_in_that_mode():
    model = LayerDrop(32)
    exported = export_with_fallbacks(model, X, "cpu")
    assert exported.mode == "eval" and not model.training and len(exported.notes) == 1
    assert linear_weights(exported.program) == linear_weights(export_model(LayerDrop(32), X, "cpu"))
    with torch.no_grad():
        torch.testing.assert_close(exported.program.module()(*X), model(*X))


def test_export_model_keeps_train_mode_when_it_can():
    model = MLP(32)
    exported = export_with_fallbacks(model, X, "cpu")
    assert exported.mode == "train" and model.training and exported.notes == []


def test_command_line_prints_the_capture_error_as_one_line_and_nothing_from_torch(capfd):
    fixture = Path(__file__).parent / "fixtures" / "expert_hit_loop.py"
    assert main([str(fixture)]) == EXIT_USER_ERROR
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert f"at {fixture}:22: `for expert_idx in expert_hit:`" in err
