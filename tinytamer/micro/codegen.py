"""C code generation: the integer graph -> model.c / model.h over the packaged kernels.

Per model only data and calls are generated: weights, biases and requantization
constants as ``const`` arrays (they land in flash), one static activation arena
sized by :mod:`tinytamer.micro.planner`, one ``tt_layer_<i>`` function per op
(so a host-driven session can time layers one by one) and
``int tt_model_run(const int8_t *in, int8_t *out)``.  The kernels themselves
are written once in ``runtime/`` (portable C99 in tt_kernels.c, Cortex-M
DSP variants in tt_kernels_dsp.c); the op's ``schedule`` picks the variant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytamer.errors import ModelError
from tinytamer.micro import schedule as sched
from tinytamer.micro.ir import Add, AvgPool, Conv2D, Dense, Graph, MaxPool, Reshape, Softmax
from tinytamer.micro.planner import MemoryPlan, find_fusions, plan

RUNTIME_DIR = Path(__file__).parent / "runtime"


@dataclass
class CModel:
    """Generated sources plus what the build and the session need to know about them."""

    files: dict[str, str]
    plan: MemoryPlan
    layers: list[tuple[str, str]]  # (C function, source layer name), in execution order
    input_size: int
    output_size: int

    def write(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            tmp = d / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, d / name)
        return d


def _array(name: str, ctype: str, values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1).tolist()
    rows = [", ".join(str(int(v)) for v in flat[i:i + 24]) for i in range(0, len(flat), 24)]
    body = ",\n    ".join(rows) if rows else "0"
    return f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n    {body}\n}};\n"


def _struct(ctype: str, name: str, fields: dict[str, int | str]) -> str:
    inits = ", ".join(f".{k} = {v if isinstance(v, str) else int(v)}" for k, v in fields.items())
    return f"static const {ctype} {name} = {{{inits}}};\n"


def _add_params(g: Graph, op: Add, i: int) -> str:
    t_in = [g.tensors[n] for n in op.inputs]
    t_out = g.tensors[op.output]
    fields = dict(size=t_out.size, left_shift=op.left_shift,
                  in1_zp=t_in[0].zero_point, in1_multiplier=op.in1_multiplier,
                  in1_shift=op.in1_shift, in2_zp=t_in[1].zero_point,
                  in2_multiplier=op.in2_multiplier, in2_shift=op.in2_shift,
                  out_zp=t_out.zero_point, out_multiplier=op.out_multiplier,
                  out_shift=op.out_shift, act_min=op.act_min, act_max=op.act_max)
    return _struct("tt_add_params", f"p{i}", fields)


def _residual(g: Graph, conv: Conv2D, a: int, dsp: bool) -> str:
    """Tables and parameters of the add fused into ``conv`` (op ``a``)."""
    add = g.ops[a]
    ta, tb = sched.add_tables(add, g)
    conv_first = add.inputs[0] == conv.output
    rq = sched.add_fast_requant(add, g) if sched.resolve(conv, dsp)["kernel"] == "mm" else None
    rq_ref = "0" if rq is None else f"(const tt_rq *)(const void *)qa{a}"
    return (_array(f"ta{a}", "int32_t", ta) + _array(f"tb{a}", "int32_t", tb)
            + ("" if rq is None else _array(f"qa{a}", "int32_t", rq))
            + _add_params(g, add, a)
            + f"static const tt_residual r{a} = {{&p{a}, "
            + (f"ta{a}, tb{a}" if conv_first else f"tb{a}, ta{a}") + f", {rq_ref}}};\n")


def generate(g: Graph, *, dsp: bool = False, fuse: bool = True) -> CModel:
    """Generate model.c/model.h; ``dsp`` allows the Cortex-M4/M7 SIMD kernel variants,
    ``fuse`` runs each residual add inside the convolution before it where legal."""
    g.validate()
    scratch = {i: sched.scratch_bytes(g, op, dsp) for i, op in enumerate(g.ops)}
    fused = find_fusions(g) if fuse else {}
    mp = plan(g, scratch, fused)

    def ref(t: str) -> str:
        kind, off = mp.location[t]
        return kind if kind != "arena" else f"(tt_arena + {off})"

    data: list[str] = []
    funcs: list[str] = []
    layers: list[tuple[str, str]] = []
    fused_adds = set(fused.values())
    for i, op in enumerate(g.ops):
        if isinstance(op, Reshape) or i in fused_adds:
            continue
        fn = f"tt_layer_{i}"
        t_in = [g.tensors[n] for n in op.inputs]
        t_out = g.tensors[op.output]
        data.append(f"/* layer {i}: {type(op).__name__} '{op.name}' "
                    f"{sched.resolve(op, dsp)} */\n")
        if isinstance(op, (Conv2D, Dense)):
            wa = sched.weight_array(op, dsp)
            data.append(_array(f"w{i}", "int32_t" if wa.dtype == np.int32 else "int8_t", wa))
            if sched.resolve(op, dsp)["kernel"] == "mm":
                # tt_rq records: bias and the single-multiply requantization per channel.
                rq = sched.fast_requant(op, t_out.zero_point)
                data.append(_array(f"q{i}", "int32_t", rq))
            else:
                data.append(_array(f"b{i}", "int32_t", op.bias))
                data.append(_array(f"m{i}", "int32_t", op.multiplier))
                data.append(_array(f"s{i}", "int32_t", op.shift))
                if isinstance(op, Conv2D) and sched.resolve(op, dsp)["kernel"] == "simd" \
                        and sched.fast_requant(op) is not None:
                    # The depthwise SIMD kernel's single-multiply requantization.
                    data.append(_array(f"q{i}", "int32_t", sched.fast_requant(op, t_out.zero_point)))
        if isinstance(op, Conv2D):
            (h, w, c), (oh, ow, oc) = t_in[0].shape, t_out.shape
            fields = dict(in_h=h, in_w=w, in_c=c, out_h=oh, out_w=ow, out_c=oc,
                          k_h=op.weight.shape[1], k_w=op.weight.shape[2],
                          stride_h=op.stride[0], stride_w=op.stride[1],
                          pad_h=op.padding[0], pad_w=op.padding[1], groups=op.groups,
                          in_zp=t_in[0].zero_point, out_zp=t_out.zero_point,
                          act_min=op.act_min, act_max=op.act_max)
            if i in fused:
                data.append(_residual(g, op, fused[i], dsp))
                fields["res"] = f"&r{fused[i]}"
            data.append(_struct("tt_conv_params", f"p{i}", fields))
        elif isinstance(op, Dense):
            fields = dict(in_n=t_in[0].size, out_n=t_out.size, in_zp=t_in[0].zero_point,
                          out_zp=t_out.zero_point, act_min=op.act_min, act_max=op.act_max)
            data.append(_struct("tt_dense_params", f"p{i}", fields))
        elif isinstance(op, (MaxPool, AvgPool)):
            (h, w, c), (oh, ow, _) = t_in[0].shape, t_out.shape
            fields = dict(in_h=h, in_w=w, c=c, out_h=oh, out_w=ow, k_h=op.kernel[0],
                          k_w=op.kernel[1], stride_h=op.stride[0], stride_w=op.stride[1],
                          pad_h=op.padding[0] if isinstance(op, MaxPool) else 0,
                          pad_w=op.padding[1] if isinstance(op, MaxPool) else 0,
                          in_zp=t_in[0].zero_point, out_zp=t_out.zero_point,
                          multiplier=getattr(op, "multiplier", 0), shift=getattr(op, "shift", 0),
                          act_min=getattr(op, "act_min", -128), act_max=getattr(op, "act_max", 127))
            data.append(_struct("tt_pool_params", f"p{i}", fields))
        elif isinstance(op, Add):
            if sched.resolve(op, dsp)["kernel"] == "lut":
                ta, tb = sched.add_tables(op, g)
                data.append(_array(f"ta{i}", "int32_t", ta))
                data.append(_array(f"tb{i}", "int32_t", tb))
            data.append(_add_params(g, op, i))
        elif isinstance(op, Softmax):
            data.append(_array(f"sm{i}", "int32_t", op.table))
            fields = dict(n=t_out.size, out_zp=t_out.zero_point, multiplier=op.multiplier,
                          act_min=op.act_min, act_max=op.act_max)
            data.append(_struct("tt_softmax_params", f"p{i}", fields))
        else:
            raise ModelError(f"C generator: no kernel for op '{type(op).__name__}' "
                             f"(layer '{op.name}')")
        args = [ref(n) for n in op.inputs]
        scratch_ref = f"(tt_arena + {mp.scratch[i]})" if i in mp.scratch else "0"
        out_ref = ref(g.ops[fused[i]].output) if i in fused else ref(op.output)
        call = sched.kernel_call(op, i, args, out_ref, scratch_ref, dsp)
        funcs.append(f"__attribute__((used, noinline))\nvoid {fn}(const int8_t *in, int8_t *out)\n{{\n"
                     f"    (void)in;\n    (void)out;\n    {call};\n}}\n")
        layers.append((fn, op.name if i not in fused else f"{op.name}+{g.ops[fused[i]].name}"))

    tin, tout = g.tensors[g.input], g.tensors[g.output]
    header = [
        "/* Generated by tinytamer: integer model. Do not edit. */",
        "#ifndef TT_MODEL_H", "#define TT_MODEL_H", "#include <stdint.h>",
        f"#define TT_INPUT_SIZE {tin.size}",
        f"#define TT_OUTPUT_SIZE {tout.size}",
        f"#define TT_ARENA_SIZE {mp.arena_size}",
        f"#define TT_NUM_LAYERS {len(layers)}",
        f"/* input  {tin.shape} (HWC) scale {tin.scale!r} zero point {tin.zero_point} */",
        f"/* output {tout.shape} scale {tout.scale!r} zero point {tout.zero_point} */",
        "int tt_model_run(const int8_t *in, int8_t *out);",
        *[f"void {fn}(const int8_t *in, int8_t *out); /* {name} */" for fn, name in layers],
        "#endif", "",
    ]
    body = [
        "/* Generated by tinytamer: integer model. Do not edit. */",
        '#include "model.h"', '#include "tt_kernels.h"', "",
        # "unused": a module whose buffers all belong to the caller never touches the arena.
        f"static int8_t tt_arena[{max(mp.arena_size, 8)}] __attribute__((aligned(8), unused));",
        f"/* {mp.report(g)} */", "",
        *data, *funcs,
        "int tt_model_run(const int8_t *in, int8_t *out)\n{",
        *[f"    {fn}(in, out);" for fn, _ in layers],
        "    return 0;\n}", "",
    ]
    return CModel({"model.c": "\n".join(body), "model.h": "\n".join(header)}, mp, layers,
                  tin.size, tout.size)
