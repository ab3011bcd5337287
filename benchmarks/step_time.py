"""Forward+backward step time of the muP-rewritten nanoGPT vs the original, as a ratio.

The rewritten model is `muprewrite.mupify(factory, base=64, target=D, verify_width=False).model`,
where `factory(width)` builds examples/nanogpt.py's GPT at d_model=width with n_head fixed (so
d_head grows and every attention gets an edit). Its runtime machinery is what is measured:
attention-scale edits are realised by scoped call interception (a TorchFunctionMode active while
each attention module runs), an untied readout multiplier by a forward pre-hook on lm_head, and a
tied (functional) readout by interception on the root module, i.e. for the whole forward.
The original is `factory(D)` built directly. Both take the same (batch, seq) token ids; a step is
zero_grad, forward, cross-entropy against fixed random targets, backward. After warm-up the two
models alternate in ABBA order (so drift cancels); per model the median step time, and per pair
the ratio rewritten/original, are reported.

    python benchmarks/step_time.py                     # d_model 128 (~0.1 s per step here)
    python benchmarks/step_time.py --d-model 512 --steps 8

Target: ratio <= 1.03. Results: benchmarks/results/step_time.{md,json} (with a non-default
--d-model: step_time_d<D>.{md,json}).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import muprewrite  # noqa: E402
from _common import interleaved_times, paired_ratios  # noqa: E402
from muprewrite.passes.realize import interceptors as muprewrite_interceptors  # noqa: E402
from nanogpt import GPT, GPTConfig  # noqa: E402

RATIO_TARGET = 1.03
DEFAULT_D_MODEL = 128
VARIANTS = (("sdpa", False), ("manual", False), ("sdpa", True))


def make_factory(args, attention: str, tied: bool):
    def factory(width: int) -> GPT:
        return GPT(GPTConfig(d_model=width, n_head=args.n_head, vocab_size=args.vocab, block_size=args.seq,
                             n_layer=args.n_layer, dropout=args.dropout, attention=attention, tied=tied))
    return factory


def step(model, idx, targets) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    logits = model(idx)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
    loss.backward()
    return time.perf_counter() - start


def time_pair(args, original, candidate, idx, targets) -> dict:
    """Warm up, then time `args.steps` steps of each model, interleaved ABBA; stats of candidate/original."""
    original.train(), candidate.train()
    for _ in range(args.warmup):
        step(original, idx, targets), step(candidate, idx, targets)
    orig, cand = interleaved_times(lambda: step(original, idx, targets), lambda: step(candidate, idx, targets),
                                   args.steps)
    stats = paired_ratios(orig, cand)
    return {
        "original_median_ms": 1e3 * statistics.median(orig), "rewritten_median_ms": 1e3 * statistics.median(cand),
        **stats,
        "original_ms": [1e3 * x for x in orig], "rewritten_ms": [1e3 * x for x in cand],
        "pass": stats["ratio_of_medians"] <= RATIO_TARGET,
    }


def inputs(args):
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    targets = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    return idx, targets


def run_variant(args, attention: str, tied: bool) -> tuple:
    factory = make_factory(args, attention, tied)
    idx, targets = inputs(args)
    t = time.perf_counter()
    result = muprewrite.mupify(factory, base=args.base, target=args.d_model, example_inputs=(idx,), verify_width=False)
    mupify_s = time.perf_counter() - t
    rewritten = result.model
    torch.manual_seed(0)
    original = factory(args.d_model)
    row = time_pair(args, original, rewritten, idx, targets)
    edits = {}
    for e in result.plan.edits:
        key = f"{e.kind} [{e.realized_by}" + (" on the root module]" if e.module == "" else "]")
        edits[key] = edits.get(key, 0) + 1
    interceptors = muprewrite_interceptors(rewritten)
    fired = sum(1 for o in interceptors for k in o.edits if o.fired[k] > 0)
    total_intercepted = sum(len(o.edits) for o in interceptors)
    row.update({"variant": f"{attention}{', tied' if tied else ''}", "attention": attention, "tied": tied,
                "edits": edits, "interception_edits_fired": f"{fired}/{total_intercepted}", "mupify_s": mupify_s})
    return row, result.plan


def run_manual_controls(args, plan) -> list:
    """Hand-written versions of the manual-attention edit (no interception, no hooks), vs the original.

    'q x factor' does what the plan's edit does (scale q, a (B, H, T, d_head) tensor); 'logits x
    factor' gives the same logits by scaling the q.k matmul's output, a (B, H, T, T) tensor.
    """
    factor = next(e.factor for e in plan.edits if e.kind == "attention_scale")
    factory = make_factory(args, "manual", False)
    idx, targets = inputs(args)

    def logits_scaled(self, q, k, v):
        T = q.size(-2)
        att = (q @ k.transpose(-2, -1)) * factor / math.sqrt(k.size(-1))
        causal = torch.tril(torch.ones(T, T, device=q.device))
        att = att.masked_fill(causal == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v

    def q_scaled(self, q, k, v):
        return type(self)._manual_attention(self, q * factor, k, v)

    rows = []
    for label, method in (("logits x factor", logits_scaled), ("q x factor", q_scaled)):
        torch.manual_seed(0)
        original = factory(args.d_model)
        edited = factory(args.d_model)
        for block in edited.blocks:
            block.attn._manual_attention = types.MethodType(method, block.attn)
        row = time_pair(args, original, edited, idx, targets)
        row.update({"variant": f"manual, control: {label} by hand", "attention": "manual", "tied": False,
                    "edits": {f"{label} by hand [factor {factor:.4g}, no hooks]": 4}, "control": True})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=DEFAULT_D_MODEL, help="target width (default %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (default %(default)s)")
    parser.add_argument("--base", type=int, default=64, help="muP base width (default %(default)s)")
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256, help="sequence length = block_size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="GPT dropout (default 0: dropout's RNG adds noise and is the same in both models)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default %(default)s)")
    parser.add_argument("--variants", default="sdpa,manual,tied", help="comma list of sdpa, manual, tied")
    parser.add_argument("--no-controls", action="store_true",
                        help="skip the hand-written controls for the manual-attention edit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    from _common import env_md, environment, mark_end, md_table, write_results

    console = Console(width=max(Console().width, 150))
    env = environment()
    wanted = {v.strip() for v in args.variants.split(",")}
    chosen = [(a, t) for a, t in VARIANTS if ("tied" if t else a) in wanted]
    console.print(f"[bold]step_time[/]: nanoGPT d_model {args.d_model} (base {args.base}), n_head {args.n_head}, "
                  f"{args.n_layer} layers, batch {args.batch} x seq {args.seq}, vocab {args.vocab}, "
                  f"{torch.get_num_threads()} threads, {args.steps} timed steps per model")
    rows = []
    for attention, tied in chosen:
        with console.status(f"{attention}{' tied' if tied else ''}: mupify + {args.warmup} warm-up + {args.steps} timed steps per model"):
            row, plan = run_variant(args, attention, tied)
        rows.append(row)
        if attention == "manual" and not args.no_controls:
            with console.status("manual: hand-written controls"):
                rows += run_manual_controls(args, plan)
    mark_end(env)

    headers = ["variant", "edits (how realised)", "original ms (median)", "rewritten (or control) ms (median)",
               "ratio of medians", "per-pair ratio median [IQR]", "ratio of minima", f"<= {RATIO_TARGET}"]
    table_rows = [[r["variant"], "; ".join(f"{n}x {k}" for k, n in r["edits"].items()),
                   f"{r['original_median_ms']:.1f}", f"{r['rewritten_median_ms']:.1f}", f"{r['ratio_of_medians']:.3f}",
                   f"{r['pair_ratio_median']:.3f} [{r['pair_ratio_p25']:.3f}, {r['pair_ratio_p75']:.3f}]",
                   f"{r['ratio_of_mins']:.3f}",
                   "(control)" if r.get("control") else "PASS" if r["pass"] else "FAIL"] for r in rows]
    table = Table(title=f"step time, muP-rewritten / original nanoGPT at d_model {args.d_model}")
    for h in headers:
        table.add_column(h, justify="left" if h in ("variant", "edits (how realised)") else "right")
    for row in table_rows:
        table.add_row(*row)
    console.print(table)

    md = ["# step_time: muP-rewritten vs original nanoGPT, forward + backward", "",
          f"examples/nanogpt.py GPT, d_model {args.d_model} (muP base {args.base}, `verify_width=False`), "
          f"n_head {args.n_head} (fixed, so d_head grows), {args.n_layer} layers, block_size = seq {args.seq}, "
          f"vocab {args.vocab}, dropout {args.dropout}, batch {args.batch}; {torch.get_num_threads()} torch threads. "
          "A step is zero_grad, forward, cross-entropy vs fixed random targets, backward. "
          f"{args.warmup} warm-up steps per model, then {args.steps} timed steps per model, interleaved in ABBA "
          "order in one process. Ratio = rewritten / original; the per-pair ratio is each adjacent "
          f"(original, rewritten) pair's ratio, with its interquartile range; the ratio of minima is the least "
          f"sensitive to other work on the machine (which only ever adds time). Target: ratio of medians <= {RATIO_TARGET}.", "",
          md_table(headers, table_rows), ""]
    for r in rows:
        if r.get("control"):
            md.append(f"- {r['variant']}: original min/max {min(r['original_ms']):.1f}/{max(r['original_ms']):.1f} ms, "
                      f"hand-edited min/max {min(r['rewritten_ms']):.1f}/{max(r['rewritten_ms']):.1f} ms")
            continue
        md.append(f"- {r['variant']}: interception edits fired {r['interception_edits_fired']}; mupify took "
                  f"{r['mupify_s']:.1f} s; original min/max {min(r['original_ms']):.1f}/{max(r['original_ms']):.1f} ms, "
                  f"rewritten min/max {min(r['rewritten_ms']):.1f}/{max(r['rewritten_ms']):.1f} ms")
    md += ["", "Edits: `attention_scale` on SDPA sets its `scale` kwarg; on manual attention it multiplies "
           "q, the q·k matmul's first operand (an extra elementwise op on (B, H, T, d_head), forward and backward); "
           "`readout_multiplier` on an untied `lm_head` is a forward pre-hook; on a tied (functional) readout it "
           "is call interception scoped to the root module, so the TorchFunctionMode sees every torch call "
           "of the forward. The `manual, control` rows are not muprewrite: they compare the original with a "
           "copy whose attention applies the same factor by hand (no hooks, no TorchFunctionMode), either "
           "on the (B, H, T, T) logits (what an output-side edit would cost) or on q as the plan's edit does, "
           "to separate the cost of the extra "
           "arithmetic from the cost of the interception machinery.", "", "## Environment", "", env_md(env)]
    name = "step_time" if args.d_model == DEFAULT_D_MODEL else f"step_time_d{args.d_model}"
    data = {"env": env, "args": vars(args), "target_ratio": RATIO_TARGET, "rows": rows}
    md_path, json_path = write_results(name, "\n".join(md), data)
    console.print(f"wrote {os.path.relpath(md_path)} and {os.path.relpath(json_path)}")


if __name__ == "__main__":
    main()
