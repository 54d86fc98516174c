"""Cost tables on the micro path: flash attributed by the linked image's call graph, and the
requantization paths in a layer's key (tinytamer.search.cost)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinytamer.errors import TamerError
from tinytamer.micro import toolchain
from tinytamer.search import cost

torch.set_num_threads(1)
needs_arm = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)

# A linker map as GNU ld writes it: long section names wrap onto the next line, fill between
# sections, an archive member, an empty input section and a section that is not in flash.
MAP = """\
Archive member included to satisfy reference by file (symbol)

LOAD /tmp/ccModel.o
LOAD /tmp/ccKernel.o
LOAD /usr/lib/libc_nano.a

.text           0x00000000      0x128
 *(.vectors)
 .vectors       0x00000000       0x40 /tmp/ccKernel.o
 *(.text .text.*)
 .text.tt_layer_0
                0x00000040       0x38 /tmp/ccModel.o
                0x00000040                tt_layer_0
 .text          0x00000078        0x0 /tmp/ccModel.o
 .text.tt_model_run
                0x00000078       0x10 /tmp/ccModel.o
 .text          0x00000088       0x20 /usr/lib/libc_nano.a(lib_a-memcpy.o)
                0x00000088                memcpy
 *(.rodata .rodata.*)
 .rodata.w0     0x000000a8       0x11 /tmp/ccModel.o
 *fill*         0x000000b9        0x3
 .rodata.hex.0  0x000000bc       0x6a /tmp/ccKernel.o
                0x00000128                . = ALIGN (0x4)

.ARM.exidx
 *(.ARM.exidx* .gnu.linkonce.armexidx.*)

.bss            0x20000000      0x5c8 load address 0x00000128
 .bss.tt_arena  0x20000000      0x5a0 /tmp/ccModel.o
"""


def test_the_linker_map_gives_every_flash_byte_to_one_piece(tmp_path):
    path = tmp_path / "model.map"
    path.write_text(MAP)
    pieces = cost._link_pieces(path)
    assert [(p.name, p.start, p.size, p.code) for p in pieces] == [
        (".vectors@#1", 0x0, 0x40, False),
        (".text.tt_layer_0@#0", 0x40, 0x38, True),
        (".text.tt_model_run@#0", 0x78, 0x10, True),
        (".text@lib_a-memcpy.o", 0x88, 0x20, True),
        (".rodata.w0@#0", 0xA8, 0x14, False),  # its alignment fill with it
        (".rodata.hex.0@#1", 0xBC, 0x6C, False),  # up to the end of .text
    ]
    assert sum(p.size for p in pieces) == 0x128
    # A constant of the generated model that no layer owns is an error, not runtime code.
    path.write_text(MAP.replace(".rodata.w0 ", ".rodata.w7 "))
    with pytest.raises(TamerError, match=r"section '\.rodata\.w7' belongs to no layer"):
        cost._attribute_flash(tmp_path / "model.elf", {0: 0})
    # A Gather's per-input tables (gt<op>_<input>) belong to their op: attribution goes on
    # past the sections (to the missing ELF here) instead of refusing the constant.
    path.write_text(MAP.replace(".rodata.w0 ", ".rodata.gt0_1 "))
    with pytest.raises(Exception) as info:
        cost._attribute_flash(tmp_path / "model.elf", {0: 0})
    assert "belongs to no layer" not in str(info.value)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 12, 12, generator=g) for _ in range(2)]


def _keyed(over: dict) -> tuple[object, list[tuple[int, str, str]]]:
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.lower import lower

    calib = _calib()
    g = lower(quantize_ptq(_small_cnn(), calib, select={"overrides": over}), calib[0][:1])
    return g, cost.micro_layers(g, dsp=True)


def test_a_coarse_input_keys_the_left_shift_requantization():
    """The grouped convolution after 2-bit activations rescales by more than 1 (shift > 0), a
    longer path of every output than after 8-bit ones: measured 12 instructions an output."""
    base = {"0": {"bits": 8, "act_bits": 8}, "4": {"bits": 4, "act_bits": 8}, "8": {"bits": 7, "act_bits": 7}}
    g8, wide = _keyed(base)
    g2, coarse = _keyed({**base, "0": {"bits": 6, "act_bits": 2}})
    conv8, conv2 = (cost.parse_key(k)["sched"] for k in (wide[2][2], coarse[2][2]))
    assert "lshift" not in conv8 and "lshift:16" in conv2
    assert wide[2][2] != coarse[2][2] and wide[4][2] == coarse[4][2]  # the dense layer keeps its key
    for g, keyed in ((g8, wide), (g2, coarse)):  # the key says what the constants select
        for i, _, key in keyed:
            shift = getattr(g.ops[i], "shift", None)
            left = 0 if shift is None else int((torch.as_tensor(shift) > 0).sum())
            assert (f"lshift:{left}" in key) == (left > 0), key


@needs_arm
def test_flash_of_a_kernel_set_no_table_model_linked_is_predicted_exactly(tmp_path):
    from tinytamer.compress.int8 import quantize_ptq

    calib = _calib()
    example = calib[0][:1]

    def uniform(bits: int) -> nn.Module:
        over = {n: {"bits": bits, "act_bits": 8} for n in ("0", "4", "8")}
        return quantize_ptq(_small_cnn(), calib, select={"overrides": over})

    table = cost.build(
        [(f"w{b}", lambda b=b: uniform(b)) for b in (8, 4)], "cortex-m4", tmp_path / "t.json", example=example
    )
    over = {"0": {"bits": 8, "act_bits": 8}, "4": {"bits": 4, "act_bits": 8}, "8": {"bits": 8, "act_bits": 8}}
    mixed = quantize_ptq(_small_cnn(), calib, select={"overrides": over})
    pred = cost.predict(mixed, "cortex-m4", table, example=example, measure_missing=False)
    got = cost.measure_micro(mixed, example, "cortex-m4", tmp_path / "m", table.memory_profile)
    assert got.kernels not in [r["kernels"] for r in table.overheads]  # int8 and packed kernels together
    assert pred.total["flash_bytes"] == got.total["flash_bytes"]
    assert pred.total["instructions"] == got.total["instructions"]
    assert abs(pred.total["est_cycles"] - got.total["est_cycles"]) <= 0.02 * got.total["est_cycles"]
    # Every linked byte is a layer's or in the code a layer or the runtime reaches, once.
    reached = set(got.runtime).union(*(la.code for la in got.layers))
    assert (
        sum(got.code[p] for p in reached) + sum(la.metrics["flash_bytes"] for la in got.layers)
        == got.total["flash_bytes"]
    )
