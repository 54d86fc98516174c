"""The ``cmsis-nn`` kernel backend: the same integer graph and memory plan, run by Arm
CMSIS-NN's s8 (and int4 convolutions' s4) kernels built from a CMSIS-NN source tree the user points to.

The tree is never copied into the product: :func:`find_root` takes the ``cmsis_nn_root``
option or the ``CMSIS_NN_ROOT`` environment variable (vendor SDKs ship one), and the build
compiles :data:`SOURCES` from it beside the model.  Per op, :class:`CmsisBackend` records the
CMSIS-NN call and its parameter structs:

- convolution (groups 1): ``arm_convolve_wrapper_s8``, or ``arm_convolve_wrapper_s4`` for a
  layer in the packed int4 weight form (:mod:`tinytamer.micro.weights`; CMSIS-NN packs the
  whole tensor two per byte, rows not byte aligned: :func:`s4_weights`); depthwise (one input
  channel per output channel): ``arm_depthwise_conv_wrapper_s8`` (weights in CMSIS-NN's
  [1, KH, KW, C]);
- dense: ``arm_fully_connected_per_channel_s8`` (``arm_fully_connected_s8`` when every
  channel shares one multiplier and shift, as TFLite Micro does); int4 and the other packed
  forms stay on tinytamer's kernels (``arm_fully_connected_s4`` takes one multiplier for the
  layer; the quantizer's are per channel);
- max pool: ``arm_max_pool_s8``; residual add: ``arm_elementwise_add_s8``;
- average pool, softmax and grouped convolutions stay on tinytamer's kernels, so outputs stay
  bit-exact: ``arm_avgpool_s8`` divides the raw window sum by its size with one rounding
  (TFLite's reference), while the integer graph requantizes the zero-point-corrected sum
  (SRDHM then a rounding shift: two roundings), which differs by one step on some sums (e.g.
  a sum of 15 over 32 values: 0 against 1); CMSIS-NN's int8 softmax computes exp by a
  different fixed-point series than the graph's LUT softmax; its convolution wrapper has no
  grouped path.  :meth:`CmsisBackend.refuses` says why for each layer.

Requantization needs no conversion: our (Q31 multiplier, shift) records are TFLite's, which
are CMSIS-NN's (shift > 0 left), and CMSIS-NN's default double rounding
(``arm_nn_doubling_high_mult_no_sat`` then ``arm_nn_divide_by_power_of_two``) equals
:func:`tinytamer.micro.fixedpoint.requantize` - except that CMSIS-NN's left shift wraps where
ours saturates, and a right shift of 31 overflows its mask.  A layer where either could happen
(checked through the worst-case accumulator) stays on our kernel, so outputs are bit-exact.

Scratch sizes are CMSIS-NN's own ``*_get_buffer_size`` functions (the ``_dsp`` variants for a
Cortex-M with the DSP extension), called through a small host build of the tree's
buffer-size sources, once per tree and DSP setting.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from tinytamer.errors import ModelError
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops import Add, AvgPool, Conv2D, Dense, MaxPool
from tinytamer.micro.ops.base import CallSite, c_array, c_requant

ENV = "CMSIS_NN_ROOT"
HINT = (
    f"point the micro target's cmsis_nn_root option (or ${ENV}) at a CMSIS-NN source tree "
    "(https://github.com/ARM-software/CMSIS-NN; it holds Include/arm_nnfunctions.h)"
)

# The CMSIS-NN sources the s8 calls above reach (wrappers, the kernels they pick, their
# support routines), relative to the tree's Source/.  The linker drops what a model does not
# call (--gc-sections on the Cortex-M build).
SOURCES = tuple(
    f"{d}/{f}.c"
    for d, names in {
        "ConvolutionFunctions": (
            "arm_convolve_wrapper_s8",
            "arm_convolve_s8",
            "arm_convolve_1x1_s8_fast",
            "arm_convolve_1x1_s8",
            "arm_convolve_1_x_n_s8",
            "arm_convolve_get_buffer_sizes_s8",
            "arm_nn_mat_mult_kernel_s8_s16",
            "arm_nn_mat_mult_kernel_row_offset_s8_s16",
            "arm_nn_mat_mult_s8",
            "arm_depthwise_conv_wrapper_s8",
            "arm_depthwise_conv_s8",
            "arm_depthwise_conv_s8_opt",
            "arm_depthwise_conv_3x3_s8",
            "arm_nn_depthwise_conv_s8_core",
            "arm_depthwise_conv_get_buffer_sizes_s8",
            "arm_convolve_wrapper_s4",
            "arm_convolve_s4",
            "arm_convolve_even_s4",
            "arm_convolve_1x1_s4_fast",
            "arm_convolve_1x1_s4",
            "arm_convolve_1_x_n_s4",
            "arm_convolve_get_buffer_sizes_s4",
            "arm_nn_mat_mult_kernel_s4_s16",
        ),
        "FullyConnectedFunctions": (
            "arm_fully_connected_s8",
            "arm_fully_connected_per_channel_s8",
            "arm_fully_connected_get_buffer_sizes_s8",
            "arm_vector_sum_s8",
        ),
        "PoolingFunctions": ("arm_max_pool_s8",),
        "BasicMathFunctions": ("arm_elementwise_add_s8",),
        "NNSupportFunctions": (
            "arm_nn_mat_mult_nt_t_s8",
            "arm_nn_mat_mul_core_1x_s8",
            "arm_nn_mat_mul_core_4x_s8",
            "arm_nn_vec_mat_mult_t_s8",
            "arm_nn_vec_mat_mult_t_per_ch_s8",
            "arm_q7_to_q15_with_offset",
            "arm_s8_to_s16_unordered_with_offset",
            "arm_nn_depthwise_conv_nt_t_s8",
            "arm_nn_depthwise_conv_nt_t_padded_s8",
            "arm_nn_mat_mult_nt_t_s4",
            "arm_nn_mat_mul_core_1x_s4",
            "arm_nn_mat_mult_nt_interleaved_t_even_s4",
        ),
    }.items()
    for f in names
)
_SIZE_SOURCES = tuple(s for s in SOURCES if "get_buffer_sizes" in s)

# CMSIS-Core headers, where a tree sits beside them (CMSIS-NN v7 does not include them; older
# trees and vendor SDK layouts do), relative to the CMSIS-NN root.
_CORE_CANDIDATES = (
    "../cmsis-6/CMSIS/Core/Include",
    "../CMSIS_6/CMSIS/Core/Include",
    "../CMSIS/Core/Include",
    "../Core/Include",
)


def find_root(root: str | Path | None = None) -> Path:
    """The CMSIS-NN tree: ``root``, else ``$CMSIS_NN_ROOT``; checked to hold the sources."""
    given = root if root not in (None, "") else os.environ.get(ENV)
    if not given:
        raise ModelError(f"kernels 'cmsis-nn' needs a CMSIS-NN source tree: {HINT}")
    r = Path(given).expanduser().resolve()
    missing = [s for s in ("Include/arm_nnfunctions.h", *(f"Source/{s}" for s in SOURCES)) if not (r / s).is_file()]
    if missing:
        raise ModelError(
            f"'{r}' is not a usable CMSIS-NN tree ({len(missing)} files missing, e.g. {missing[0]}): {HINT}"
        )
    return r


def include_dirs(root: Path) -> list[Path]:
    """CMSIS-NN's Include/ and, where found beside it, the CMSIS-Core headers."""
    core = [(root / c).resolve() for c in _CORE_CANDIDATES if (root / c / "cmsis_compiler.h").is_file()]
    return [root / "Include", *core[:1]]


# ---------------------------------------------------------------------------- scratch sizes

_SIZE_MAIN = r"""
#include <stdio.h>
#include "arm_nnfunctions.h"
#if TT_CMSIS_DSP
#define SZ(f) f##_dsp
#else
#define SZ(f) f
#endif
/* One query per line: c|C|d (conv s8 / conv s4 / depthwise) H W C OC KH KW OH OW SH SW PH
   PW, or f IN OUT; one size per line out. */
int main(void)
{
    char k;
    while (scanf(" %c", &k) == 1) {
        long v[12] = {0};
        int n = k == 'f' ? 2 : 12;
        for (int i = 0; i < n; i++)
            if (scanf("%ld", &v[i]) != 1) return 2;
        cmsis_nn_dims in = {1, v[0], v[1], v[2]}, out = {1, v[6], v[7], v[3]};
        cmsis_nn_dims flt = {v[3], v[4], v[5], v[2]};
        cmsis_nn_tile st = {v[9], v[8]}, pd = {v[11], v[10]}, dl = {1, 1};
        cmsis_nn_activation act = {-128, 127};
        long r;
        if (k == 'c') {
            cmsis_nn_conv_params p = {0, 0, st, pd, dl, act};
            r = SZ(arm_convolve_wrapper_s8_get_buffer_size)(&p, &in, &flt, &out);
        } else if (k == 'C') {
            cmsis_nn_conv_params p = {0, 0, st, pd, dl, act};
            r = SZ(arm_convolve_wrapper_s4_get_buffer_size)(&p, &in, &flt, &out);
        } else if (k == 'd') {
            cmsis_nn_dw_conv_params p = {0, 0, 1, st, pd, dl, act};
            cmsis_nn_dims f1 = {1, v[4], v[5], v[3]};
            r = SZ(arm_depthwise_conv_wrapper_s8_get_buffer_size)(&p, &in, &f1, &out);
        } else if (k == 'f') {
            cmsis_nn_dims f = {v[0], 1, 1, v[1]};
            r = SZ(arm_fully_connected_s8_get_buffer_size)(&f);
        } else {
            return 2;
        }
        printf("%ld\n", r);
    }
    return 0;
}
"""


@cache
def _size_tool(root: Path, dsp: bool) -> Path:
    """A host executable answering CMSIS-NN's buffer-size functions (built once per tree)."""
    from tinytamer.micro.toolchain import require

    d = Path(tempfile.mkdtemp(prefix="tinytamer-cmsis-"))
    (d / "sizes.c").write_text(_SIZE_MAIN)
    exe = d / "sizes"
    cmd = [
        require("gcc"),
        "-std=c99",
        "-O1",
        f"-DTT_CMSIS_DSP={int(dsp)}",
        *(f"-I{p}" for p in include_dirs(root)),
        str(d / "sizes.c"),
        *(str(root / "Source" / s) for s in _SIZE_SOURCES),
        "-o",
        str(exe),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"building CMSIS-NN's buffer-size functions from {root} failed:\n{proc.stderr[-3000:]}")
    return exe


def buffer_sizes(root: Path, dsp: bool, queries: list[str]) -> list[int]:
    """CMSIS-NN's ``*_get_buffer_size`` answers for ``queries`` (lines as in _SIZE_MAIN)."""
    if not queries:
        return []
    proc = subprocess.run(
        [str(_size_tool(root, dsp))], input="\n".join(queries) + "\n", capture_output=True, text=True, timeout=60
    )
    sizes = [int(v) for v in proc.stdout.split()]
    if proc.returncode != 0 or len(sizes) != len(queries):
        raise ModelError(f"CMSIS-NN buffer-size query failed: {proc.stderr[-500:]}")
    return sizes


# ---------------------------------------------------------------------------- exactness


def _requant_refusal(op: Conv2D | Dense) -> str | None:
    """Why CMSIS-NN's requantization could differ from the reference on this layer, or None."""
    shift = op.shift.astype(np.int64)
    if np.any(shift < -30):
        return "a right shift of 31 (CMSIS-NN's rounding mask overflows)"
    w = op.weight.reshape(op.weight.shape[0], -1).astype(np.int64)
    bound = np.abs(op.bias.astype(np.int64)) + 255 * np.abs(w).sum(axis=1)
    if np.any((bound << np.maximum(shift, 0)) >= 1 << 31):
        return "a left shift that can overflow (CMSIS-NN wraps where the reference saturates)"
    return None


# ---------------------------------------------------------------------------- C


def _dims(name: str, n: int, h: int, w: int, c: int) -> str:
    return f"static const cmsis_nn_dims {name} = {{{n}, {h}, {w}, {c}}};\n"


def _tile(h: int, w: int) -> str:
    return f"{{.w = {w}, .h = {h}}}"


def _act(lo: int, hi: int) -> str:
    return f"{{.min = {lo}, .max = {hi}}}"


@dataclass
class CmsisBackend:
    """CMSIS-NN calls for the ops it takes; the rest run on tinytamer's kernels."""

    root: Path
    dsp: bool
    name: str = "cmsis-nn"
    includes: tuple[str, ...] = ("arm_nnfunctions.h",)
    functions: dict[int, str] = field(default_factory=dict)  # op index -> CMSIS-NN call

    @property
    def sources(self) -> list[Path]:
        return [self.root / "Source" / s for s in SOURCES]

    @property
    def include_dirs(self) -> list[Path]:
        return include_dirs(self.root)

    def refuses(self, g: Graph, op: Op) -> str | None:
        """Why ``op`` stays on tinytamer's kernel, or None when CMSIS-NN runs it."""
        if isinstance(op, Conv2D):
            if op.weight_form == "int4" and (op.depthwise or op.groups > 1):
                return "int4 weights in a depthwise or grouped convolution (this backend runs s4 convolutions)"
            if op.weight_form not in ("int8", "int4"):
                return f"{op.weight_form} weights (this backend runs int8 weights and int4 convolutions)"
            if op.groups > 1 and not op.depthwise:
                return "a grouped convolution (no CMSIS-NN wrapper path)"
            return _requant_refusal(op)
        if isinstance(op, Dense):
            if op.weight_form != "int8":
                # arm_fully_connected_s4 takes one multiplier and shift for the layer; the
                # int8 quantizer gives one per output channel.
                return f"{op.weight_form} weights (this backend runs int8 fully connected weights)"
            return _requant_refusal(op)
        if isinstance(op, AvgPool):
            return (
                "arm_avgpool_s8 rounds the window mean once; the graph requantizes the "
                "window sum (two roundings, one step apart on some sums)"
            )
        if isinstance(op, (MaxPool, Add)):
            return None
        return f"no bit-exact CMSIS-NN kernel for {type(op).__name__}"

    def scratch_sizes(self, g: Graph, taken: list[int]) -> dict[int, int]:
        """Arena bytes per taken op, from CMSIS-NN's own buffer-size functions."""
        queries: dict[int, str] = {}
        for i in taken:
            op = g.ops[i]
            t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.output]
            if isinstance(op, Conv2D):
                (h, w, c), (oh, ow, oc) = t_in.shape, t_out.shape
                _, kh, kw, _ = op.weight.shape
                kind = "d" if op.depthwise else "C" if op.weight_form == "int4" else "c"
                queries[i] = " ".join(map(str, (kind, h, w, c, oc, kh, kw, oh, ow, *op.stride, *op.padding)))
            elif isinstance(op, Dense):
                queries[i] = f"f {op.weight.shape[1]} {op.weight.shape[0]}"
        sizes = buffer_sizes(self.root, self.dsp, list(queries.values()))
        return {i: max(s, 0) for i, s in zip(queries, sizes, strict=True)}

    def emit_c(self, op: Op, site: CallSite, scratch_size: int) -> tuple[list[str], str]:
        """The op's constants and its CMSIS-NN call."""
        g, i, x, out = site.g, site.i, site.args[0], site.out
        t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.output]
        ctx = f"static const cmsis_nn_context cx{i} = {{(void *){site.scratch}, {scratch_size}}};\n"
        if isinstance(op, Add):
            ta, tb = (g.tensors[n] for n in op.inputs)
            fn = "arm_elementwise_add_s8"
            self.functions[i] = fn
            return [], (
                f"(void){fn}({x}, {site.args[1]}, {-ta.zero_point}, {op.in1_multiplier}, "
                f"{op.in1_shift}, {-tb.zero_point}, {op.in2_multiplier}, {op.in2_shift}, "
                f"{op.left_shift}, {out}, {t_out.zero_point}, {op.out_multiplier}, "
                f"{op.out_shift}, {op.act_min}, {op.act_max}, {t_out.size})"
            )
        if isinstance(op, MaxPool):
            (h, w, c), (oh, ow, _) = t_in.shape, t_out.shape
            fn = "arm_max_pool_s8"
            self.functions[i] = fn
            # Padding is skipped (a window's max over its in-map part), as the reference's
            # below-int8 padding value gives.
            data = [
                ctx,
                f"static const cmsis_nn_pool_params pp{i} = {{.stride = "
                f"{_tile(*op.stride)}, .padding = {_tile(*op.padding)}, "
                f".activation = {_act(-128, 127)}}};\n",
                _dims(f"di{i}", 1, h, w, c),
                _dims(f"df{i}", 1, *op.kernel, 1),
                _dims(f"do{i}", 1, oh, ow, c),
            ]
            return data, f"(void){fn}(&cx{i}, &pp{i}, &di{i}, {x}, &df{i}, &do{i}, {out})"
        if isinstance(op, Dense):
            n_in, n_out = op.weight.shape[1], op.weight.shape[0]
            per_tensor = bool(np.all(op.multiplier == op.multiplier[0]) and np.all(op.shift == op.shift[0]))
            data = [
                ctx,
                c_array(f"w{i}", "int8_t", op.weight),
                *c_requant(i, op),
                f"static const cmsis_nn_fc_params fp{i} = {{.input_offset = "
                f"{-t_in.zero_point}, .filter_offset = 0, .output_offset = "
                f"{t_out.zero_point}, .activation = {_act(op.act_min, op.act_max)}}};\n",
                _dims(f"di{i}", 1, 1, 1, n_in),
                _dims(f"df{i}", n_in, 1, 1, n_out),
                _dims(f"db{i}", 1, 1, 1, n_out),
                _dims(f"do{i}", 1, 1, 1, n_out),
            ]
            if per_tensor:
                fn = "arm_fully_connected_s8"
                data.append(
                    f"static const cmsis_nn_per_tensor_quant_params q{i} = "
                    f"{{{int(op.multiplier[0])}, {int(op.shift[0])}}};\n"
                )
            else:
                fn = "arm_fully_connected_per_channel_s8"
                data.append(
                    f"static const cmsis_nn_per_channel_quant_params q{i} = {{(int32_t *)m{i}, (int32_t *)s{i}}};\n"
                )
            self.functions[i] = fn
            return data, (f"(void){fn}(&cx{i}, &fp{i}, &q{i}, &di{i}, {x}, &df{i}, w{i}, &db{i}, b{i}, &do{i}, {out})")
        assert isinstance(op, Conv2D)
        (h, w, c), (oh, ow, oc) = t_in.shape, t_out.shape
        _, kh, kw, icg = op.weight.shape
        common = f"{-t_in.zero_point}, .output_offset = {t_out.zero_point}, "
        tail = (
            f".stride = {_tile(*op.stride)}, .padding = {_tile(*op.padding)}, "
            f".dilation = {_tile(1, 1)}, .activation = {_act(op.act_min, op.act_max)}}};\n"
        )
        if op.depthwise:
            fn = "arm_depthwise_conv_wrapper_s8"
            wa = np.ascontiguousarray(op.weight[..., 0].transpose(1, 2, 0))  # [KH][KW][C]
            params = f"static const cmsis_nn_dw_conv_params cp{i} = {{.input_offset = {common}.ch_mult = 1, {tail}"
            fdims = _dims(f"df{i}", 1, kh, kw, oc)
        elif op.weight_form == "int4":
            fn = "arm_convolve_wrapper_s4"
            wa = s4_weights(op.weight)
            params = f"static const cmsis_nn_conv_params cp{i} = {{.input_offset = {common}{tail}"
            fdims = _dims(f"df{i}", oc, kh, kw, icg)
        else:
            fn = "arm_convolve_wrapper_s8"
            wa = op.weight  # OHWI, as CMSIS-NN reads it
            params = f"static const cmsis_nn_conv_params cp{i} = {{.input_offset = {common}{tail}"
            fdims = _dims(f"df{i}", oc, kh, kw, icg)
        self.functions[i] = fn
        data = [
            ctx,
            c_array(f"w{i}", "int8_t", wa),
            *c_requant(i, op),
            params,
            f"static const cmsis_nn_per_channel_quant_params q{i} = {{(int32_t *)m{i}, (int32_t *)s{i}}};\n",
            _dims(f"di{i}", 1, h, w, c),
            fdims,
            _dims(f"db{i}", 1, 1, 1, oc),
            _dims(f"do{i}", 1, oh, ow, oc),
        ]
        return data, (f"(void){fn}(&cx{i}, &cp{i}, &q{i}, &di{i}, {x}, &df{i}, w{i}, &db{i}, b{i}, &do{i}, {out})")


def s4_weights(weight: np.ndarray) -> np.ndarray:
    """int4 weights in CMSIS-NN's s4 layout: the whole OHWI tensor flattened, two per byte, low
    nibble first (rows are not byte aligned: an odd row length starts the next row mid-byte)."""
    flat = (weight.reshape(-1).astype(np.int16) & 15).astype(np.uint8)
    flat = np.pad(flat, (0, len(flat) % 2))
    return (flat[0::2] | flat[1::2] << 4).view(np.int8)


def backend(root: str | Path | None, dsp: bool) -> CmsisBackend:
    """The CMSIS-NN backend over the tree at ``root`` (or ``$CMSIS_NN_ROOT``)."""
    return CmsisBackend(find_root(root), dsp)
