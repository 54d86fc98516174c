"""Static memory plan for the activation arena: liveness + greedy placement.

Each buffer lives from the op that writes it to the last op that reads it
(reshapes alias their input, so they extend its life).  Buffers are placed
largest first at the lowest offset that does not overlap any placed buffer
whose lifetime overlaps (the greedy-by-size strategy of TensorFlow Lite
Micro's ``GreedyMemoryPlanner``).  An elementwise ``Add`` writes in place over
an input that dies at it.  Kernel scratch memory (im2col buffers) is a buffer
that lives for its one op.  The graph's input lives in the arena too (as TensorFlow Lite
Micro and X-CUBE-AI place it): the caller writes it at ``tt_model_input()``, and its bytes
are reused once the first layers have read it; the output buffer belongs to the caller
(``tt_model_run(in, out)``).  A convolution whose
only consumer is the residual add after it can run fused with it
(:func:`find_fusions`): its output then needs no buffer at all.  Where a residual add's
two branches are convolutions, the lowering chooses which runs first, by the fused
kernel's form and then by the arena each order plans (:func:`order_residual_branches`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinytamer.micro import schedule
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops import op_def

ALIGN = 8


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = -1
    tensors: list[str] = field(default_factory=list)


@dataclass
class MemoryPlan:
    """Where every tensor lives: 'in', 'out' or an arena offset; plus the peak report."""

    arena_size: int
    location: dict[str, tuple[str, int]]  # tensor -> ("in" | "out" | "arena", byte offset)
    scratch: dict[int, int]  # op index -> arena offset of its scratch buffer
    buffers: list[Buffer]
    peak_op: int
    peak_live: list[tuple[str, int]]

    def report(self, g: Graph) -> str:
        where = g.ops[self.peak_op].name if self.peak_op >= 0 else "-"
        live = ", ".join(f"{n} {s} B" for n, s in self.peak_live)
        return f"arena {self.arena_size} B; peak at op '{where}': {live}"


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def base_of(g: Graph) -> dict[str, str]:
    """Tensor -> the tensor whose memory it uses (reshapes alias their input)."""
    base = {g.input: g.input}
    for op in g.ops:
        base[op.output] = base[op.inputs[0]] if op_def(op).aliases_input else op.output
    return base


def _last_uses(g: Graph, base: dict[str, str]) -> dict[str, int]:
    last_use: dict[str, int] = {}
    for i, op in enumerate(g.ops):
        for t in op.inputs:
            last_use[base[t]] = i
    return last_use


def find_fusions(g: Graph, dsp: bool = False) -> dict[int, int]:
    """Convolutions whose only consumer is the residual add right after them: {conv: add}.

    The fused kernel adds each output to the other input in place, so the conv's own
    output never needs a buffer (the residual block's peak drops by one feature map).
    Legal when the other input dies at the add and belongs to the arena.  When it is also
    the conv's own input (``y = conv(x) + x``), the outputs overwrite what the conv still
    reads: legal only for a pointwise, stride-1 conv whose kernel (on a ``dsp`` build)
    gathers each pixel's input before it writes that pixel's outputs ("mm", "im2col").
    """
    base = base_of(g)
    last_use = _last_uses(g, base)
    fused: dict[int, int] = {}
    for k in range(len(g.ops) - 1):
        conv, add = g.ops[k], g.ops[k + 1]
        if not (op_def(conv).fuses_following_add(conv) and op_def(add).residual):
            continue
        if conv.output not in add.inputs or add.inputs[0] == add.inputs[1]:
            continue
        other = base[next(t for t in add.inputs if t != conv.output)]
        if (
            len(g.consumers(conv.output)) != 1
            or conv.output == g.output
            or base[g.output] == add.output
            or other == g.input
            or last_use.get(other) != k + 1
            or (other in {base[t] for t in conv.inputs} and not _gathers_first(conv, dsp))
        ):
            continue
        fused[k] = k + 1
    return fused


def order_residual_branches(g: Graph, dsp: bool = True) -> list[str]:
    """Where both inputs of a residual add are convolutions that feed only it and run one
    after the other, choose which runs first.

    The later one is fused with the add (:func:`find_fusions`).  The fused kernels' plain
    output paths compute the conv's side of the add with one multiply-add and read the other
    side from its table; with the sides the other way round they take mirrored paths, whose
    kernel instance is more flash (4.5 KB on ResNet-8).  So where only one side's
    rescale is affine, that side's conv runs last.  Otherwise the order that plans the
    smaller arena runs (planned as the device build plans it: default schedules, fused
    adds, the ``dsp`` kernels' scratch): in a downsampling block the 3 x 3 conv, run before
    the 1 x 1 shortcut, runs while the block input (which the shortcut still reads), the
    first conv's output and its own output are alive, with its im2col scratch on top; run
    after it, the block input is already dead.  Where both orders plan the same arena the
    model's order stays.  Returns the names of the convolutions moved ahead, in ``g.ops``
    order.
    """
    from tinytamer.micro.ops.add import add_tables, affine_table

    moved = []
    for k in range(1, len(g.ops) - 1):
        first, conv, add = g.ops[k - 1], g.ops[k], g.ops[k + 1]
        if not (op_def(add).residual and op_def(conv).fuses_following_add(conv)):
            continue
        if not (op_def(first).fuses_following_add(first) and {conv.output, first.output} == set(add.inputs)):
            continue
        if first.output in conv.inputs or len(g.consumers(conv.output)) != 1 or len(g.consumers(first.output)) != 1:
            continue
        t_first, t_conv = add_tables(add, g)
        if add.inputs[0] == conv.output:
            t_first, t_conv = t_conv, t_first
        affine_now, affine_swapped = affine_table(t_conv) is not None, affine_table(t_first) is not None
        if affine_now != affine_swapped:
            swap = affine_swapped
        else:
            before = _device_arena(g, dsp)
            g.ops[k - 1], g.ops[k] = conv, first
            swap = _device_arena(g, dsp) < before
            g.ops[k - 1], g.ops[k] = first, conv
        if swap:
            g.ops[k - 1], g.ops[k] = conv, first
            moved.append(conv.name)
    return moved


def _device_arena(g: Graph, dsp: bool) -> int:
    """The arena :func:`plan` gives ``g`` with the default kernels' scratch and fused adds."""
    scratch = {i: schedule.scratch_bytes(g, op, dsp) for i, op in enumerate(g.ops)}
    return plan(g, scratch, find_fusions(g, dsp)).arena_size


def _gathers_first(conv: Op, dsp: bool) -> bool:
    """Whether ``conv`` may write its outputs over its own input: each output pixel reads
    only the same input pixel (1 x 1, stride 1, no padding) and the kernel copies that
    pixel's input into its scratch before it writes any of the pixel's outputs."""
    pointwise = conv.weight.shape[1:3] == (1, 1) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)
    return pointwise and schedule.resolve(conv, dsp).get("kernel") in ("mm", "im2col")


def plan(
    g: Graph,
    scratch_sizes: dict[int, int] | None = None,
    fused: dict[int, int] | None = None,
    *,
    input_in_arena: bool = True,
) -> MemoryPlan:
    """Plan the arena; ``scratch_sizes`` maps op index -> scratch bytes the op's kernel needs,
    ``fused`` the conv -> add pairs of :func:`find_fusions` that run as one kernel;
    ``input_in_arena`` False leaves the input in the caller's buffer (a program whose layers
    are called one by one on a buffer of the caller's, as the tuner's benches are)."""
    scratch_sizes = scratch_sizes or {}
    base = base_of(g)
    out_base = base[g.output]
    caller = {out_base: "out"} if input_in_arena else {g.input: "in", out_base: "out"}
    last_use = _last_uses(g, base)
    first_def: dict[str, int] = {g.input: 0} if input_in_arena else {}
    for i, op in enumerate(g.ops):
        if not op_def(op).aliases_input:
            first_def.setdefault(op.output, i)

    owner: dict[str, str] = {}
    virtual: dict[str, str] = {}  # fused conv output -> the add output it is folded into
    for k, a in (fused or {}).items():
        conv_out, add = g.ops[k].output, g.ops[a]
        other = base[next(t for t in add.inputs if t != conv_out)]
        owner[add.output] = owner.get(other, other)
        virtual[conv_out] = add.output
    # In-place adds: the output takes over an input's buffer when that input dies here.
    for i, op in enumerate(g.ops):
        if op_def(op).in_place and op.output not in caller and op.output not in owner:
            for t in op.inputs:
                b = owner.get(base[t], base[t])
                if b not in caller and last_use.get(base[t]) == i:
                    owner[op.output] = b
                    break

    buffers: dict[str, Buffer] = {}
    for t, i in first_def.items():
        if t in caller or t in virtual:
            continue
        b = owner.get(t, t)
        end = last_use.get(t, i)
        if b in buffers:
            buf = buffers[b]
            buf.first, buf.last = min(buf.first, i), max(buf.last, end)
            buf.tensors.append(t)
        else:
            buffers[b] = Buffer(b, g.tensors[t].size, i, end, tensors=[t])
    for i, size in scratch_sizes.items():
        if size > 0:
            buffers[f"scratch:{i}"] = Buffer(f"scratch:{g.ops[i].name}", size, i, i)

    placed: list[Buffer] = []
    for buf in sorted(buffers.values(), key=lambda b: (-b.size, b.first)):
        alive = [o for o in placed if not (buf.last < o.first or o.last < buf.first)]
        offset = 0
        while True:
            clash = [
                o.offset + _align(o.size)
                for o in alive
                if offset < o.offset + _align(o.size) and o.offset < offset + _align(buf.size)
            ]
            if not clash:
                break
            offset = min(clash)
        buf.offset = offset
        placed.append(buf)
    arena = max((b.offset + _align(b.size) for b in placed), default=0)

    location: dict[str, tuple[str, int]] = {}
    for t, b in base.items():
        b = base[virtual[b]] if b in virtual else b
        if b in caller:
            location[t] = (caller[b], 0)
        else:
            location[t] = ("arena", buffers[owner.get(b, b)].offset)
    scratch = {i: buffers[f"scratch:{i}"].offset for i, s in scratch_sizes.items() if s > 0}

    peak_op, peak_bytes, peak_live = -1, -1, []
    for i in range(len(g.ops)):
        live = [b for b in placed if b.first <= i <= b.last]
        total = sum(b.size for b in live)
        if total > peak_bytes:
            peak_op, peak_bytes = i, total
            peak_live = [(b.name, b.size) for b in sorted(live, key=lambda b: -b.size)]
    return MemoryPlan(arena, location, scratch, placed, peak_op, peak_live)
