"""Cortex-M builds: QEMU whole-program runs and the unicorn Session (needs the ARM toolchain)."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.errors import ModelError
from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import random_graph
from tinytamer.micro.cost import CYCLE_TABLES, BlockCoster
from tinytamer.micro.session import Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)
qemu = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)


def _case(seed: int = 0, n: int = 5):
    g = random_graph(seed, size=8, channels=4)
    rng = np.random.default_rng(seed)
    xs = rng.integers(-128, 128, (n, *g.tensors[g.input].shape)).astype(np.int8)
    return g, xs, np.stack([reference.run(g, x) for x in xs])


@qemu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7"])
def test_qemu_run_is_bit_exact(tmp_path, cpu):
    g, xs, want = _case()
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, cpu, inputs=xs.reshape(len(xs), -1))
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)
    # Flash and SRAM come from the linked sections.
    assert build.flash_bytes >= build.sections[".text"] > 0
    assert build.sram_bytes >= build.sections[".bss"] >= cm.plan.arena_size


@arm
def test_an_image_built_to_be_measured_holds_no_test_input(tmp_path):
    """Flash is the model's and the runtime's: without inputs the image embeds one byte of
    test data, and with n inputs exactly n times the input's bytes more."""
    from elftools.elf.elffile import ELFFile

    g, xs, _ = _case(n=3)
    cm = codegen.generate(g, dsp=True)

    def inputs_bytes(build) -> int:
        with open(build.elf, "rb") as f:
            sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("tt_inputs")
        return sym[0]["st_size"]

    bare = toolchain.arm_build(cm, tmp_path / "bare", "cortex-m4")
    fed = toolchain.arm_build(cm, tmp_path / "fed", "cortex-m4", inputs=xs.reshape(len(xs), -1))
    assert inputs_bytes(bare) == 1
    assert inputs_bytes(fed) == 3 * cm.input_size


@qemu
def test_the_runtime_is_compiled_once_and_the_image_is_the_same(tmp_path, monkeypatch):
    """Kernel objects come from the cache on the second build; the image is byte for byte the
    one a build that compiles everything makes; other flags make other objects."""
    import subprocess

    monkeypatch.setenv("TINYTAMER_CACHE", str(tmp_path / "cache"))
    g, xs, want = _case(1, 2)
    cm = codegen.generate(g, dsp=True)
    first = toolchain.arm_build(cm, tmp_path / "a", inputs=xs.reshape(len(xs), -1))
    objects = sorted((tmp_path / "cache" / "micro-objects").glob("*.o"))
    assert len(objects) == len(toolchain.KERNEL_SOURCES)
    stamps = [o.stat().st_mtime_ns for o in objects]
    again = toolchain.arm_build(cm, tmp_path / "b", inputs=xs.reshape(len(xs), -1))
    assert [o.stat().st_mtime_ns for o in objects] == stamps  # nothing recompiled
    np.testing.assert_array_equal(toolchain.qemu_run(again, cm.output_size), want)
    # The same image as one gcc command compiling every source itself.
    c = toolchain.cpu("cortex-m4")
    flags = [*c.flags, "-std=c99", "-O2", "-fno-strict-aliasing", "-ffunction-sections", "-fdata-sections"]
    srcs = [tmp_path / "a" / "model.c", *(codegen.RUNTIME_DIR / s for s in toolchain.KERNEL_SOURCES)]
    srcs += [codegen.RUNTIME_DIR / s for s in ("main_semihost.c", "startup_cm.c", "semihost.c")]
    srcs.append(tmp_path / "a" / "inputs.c")
    link = ["-nostartfiles", "--specs=nano.specs", "-T", str(codegen.RUNTIME_DIR / "cortexm.ld"), "-Wl,--gc-sections"]
    whole = tmp_path / "whole.elf"
    subprocess.run(
        ["arm-none-eabi-gcc", *flags, "-DTT_DSP=1", f"-I{tmp_path / 'a'}", f"-I{codegen.RUNTIME_DIR}", *map(str, srcs)]
        + [*link, "-o", str(whole)],
        check=True,
    )

    def image(elf) -> bytes:  # what is loaded onto the part (the ELF also names its source paths)
        subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", str(elf), str(tmp_path / "x.bin")], check=True)
        return (tmp_path / "x.bin").read_bytes()

    assert image(first.elf) == image(again.elf) == image(whole)
    toolchain.arm_build(codegen.generate(g, dsp=True), tmp_path / "c", opt="-O1")
    assert len(list((tmp_path / "cache" / "micro-objects").glob("*.o"))) == 2 * len(toolchain.KERNEL_SOURCES)


@arm
@pytest.mark.parametrize("opt", ["-O0", "-O1", "-O2", "-Os", "-O3"])
@pytest.mark.parametrize("part", ["cortex-m4", "cortex-m7"])
def test_the_asm_kernels_compile_at_the_levels_the_firmware_readme_names(tmp_path, opt, part):
    """The convolution's inline assembly takes 14 registers; GCC must find them at every
    level a firmware build may use (not -Og: the README says so), on both parts (their
    schedulers place the code around it differently)."""
    import subprocess

    flags = [*toolchain.cpu(part).flags, "-std=c99", opt, "-Wall", "-Werror", "-fno-strict-aliasing"]
    src = codegen.RUNTIME_DIR / "tt_conv.c"
    cmd = ["arm-none-eabi-gcc", *flags, "-DTT_DSP=1", f"-I{codegen.RUNTIME_DIR}", "-c", str(src)]
    proc = subprocess.run([*cmd, "-o", str(tmp_path / "c.o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@arm
@pytest.mark.parametrize("lazy", [False, True])
def test_session_strict_and_lazy(tmp_path, lazy):
    g, xs, want = _case(1, n=3)
    cm = codegen.generate(g, dsp=True)
    with Session("cortex-m4", cm, workdir=tmp_path, lazy=lazy) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        results = []
        for x, w in zip(xs, want, strict=True):
            sess.write(t_in, x.reshape(-1))
            r = sess.call("tt_model_run", t_in, t_out)
            assert r.done is not lazy  # a lazy call waits for the read
            np.testing.assert_array_equal(sess.read(t_out), w)
            assert r.done and r.returned == 0
            results.append(r)
        # Exact counts repeat run to run for the same input.
        sess.write(t_in, xs[0].reshape(-1))
        again = sess.call("tt_model_run", t_in, t_out)
        sess.flush()
        assert again.instructions == results[0].instructions > 1000
        assert again.est_cycles == results[0].est_cycles >= again.instructions
        # Per-layer calls add up to the whole inference, minus its own call overhead.
        layers = [sess.call(fn, t_in, t_out) for fn, _ in cm.layers]
        sess.flush()
        total = sum(r.instructions for r in layers)
        assert 0 < again.instructions - total < 20 * len(layers) + 50


@arm
def test_session_errors(tmp_path):
    g, _, _ = _case()
    cm = codegen.generate(g)
    with Session("cortex-m4", cm, workdir=tmp_path) as sess:
        with pytest.raises(ModelError, match="no function 'nope'"):
            sess.call("nope")
        with pytest.raises(ModelError, match="SRAM is full"):
            sess.alloc(8 << 20)
    with pytest.raises(ModelError, match="unknown device"):
        Session("cortex-m0", cm)


def test_cycle_table_classes():
    """Known Thumb-2 encodings get the TRM cycles: ALU 1, load 2 then 1 pipelined, SMLAD 1,
    push of 2 registers 1 + 2."""
    coster = BlockCoster(CYCLE_TABLES["cortex-m4"])
    adds = bytes.fromhex("0844")  # add r0, r1
    ldr2 = bytes.fromhex("08684968")  # ldr r0, [r1]; ldr r1, [r1, #4]
    smlad = bytes.fromhex("20fb0101")  # smlad r1, r0, r1, r0
    push = bytes.fromhex("10b5")  # push {r4, lr}
    assert coster.cost(adds, 0).cycles == 1
    assert coster.cost(ldr2, 0x10).cycles == 3 and coster.cost(ldr2, 0x10).instructions == 2
    assert coster.cost(smlad, 0x20).cycles == 1
    assert coster.cost(push, 0x30).cycles == 3


def test_a_load_falling_through_into_the_next_block_still_pipelines():
    """The emulator may end a block where no branch is (a page boundary): the two loads of
    one straight line cost 2 + 1 whether or not a block boundary falls between them; a
    block reached by a taken branch starts afresh."""
    from tinytamer.micro.session import _charge, _Counter, _on_block

    table = CYCLE_TABLES["cortex-m4"]
    coster = BlockCoster(table)
    code = {0x10: bytes.fromhex("0868"), 0x12: bytes.fromhex("4968")}  # ldr r0, [r1] | ldr r1, [r1, #4]
    whole = coster.cost(code[0x10] + code[0x12], 0x10).cycles
    assert whole == 3
    c = _Counter(prev_end=0x10)
    _on_block(None, 0x10, 2, c)
    _on_block(None, 0x12, 2, c)
    assert c.jumps == 0 and c.follows == {((0x10, 2), (0x12, 2)): 1}
    _, cycles = _charge(c, lambda a, n: coster.cost(code[a], a), table)
    assert cycles == whole + table.branch_refill  # the return's refill
    jumped = _Counter(prev_end=0x10)
    _on_block(None, 0x10, 2, jumped)
    jumped.prev_end = 0x40  # the next block reached by a branch
    _on_block(None, 0x12, 2, jumped)
    assert jumped.follows == {} and jumped.jumps == 1
    _, cycles = _charge(jumped, lambda a, n: coster.cost(code[a], a), table)
    assert cycles == 2 + 2 + 2 * table.branch_refill


@qemu
@pytest.mark.parametrize(
    "sched",
    [
        {"kernel": "direct"},
        {"kernel": "im2col", "cols": 1, "pack": "channel"},
        {"kernel": "im2col", "cols": 2, "pack": "flat"},
    ],
)
def test_every_conv_schedule_is_bit_exact(tmp_path, sched):
    from tinytamer.micro.ir import Add, Conv2D, Dense

    g, xs, want = _case(3, n=3)
    for op in g.ops:
        if isinstance(op, Conv2D) and not op.depthwise:
            op.schedule = dict(sched)
        elif isinstance(op, (Conv2D, Dense, Add)):
            op.schedule = {"kernel": "direct"}
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=xs.reshape(len(xs), -1))
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)


@arm
def test_tuner_measures_once_and_reuses_its_log(tmp_path):
    from tinytamer.micro.builder import GraphBuilder
    from tinytamer.micro.tuning import TuningLog, tune

    rng = np.random.default_rng(0)
    b = GraphBuilder((6, 6, 1), 0.02, 3)
    x = b.conv(
        b.input,
        rng.integers(-127, 128, (8, 1, 3, 3)),
        np.full(8, 0.01),
        None,
        0.05,
        -5,
        padding=(1, 1),
        relu="relu",
        name="stem",
    )
    g = b.graph(x)
    log = tmp_path / "tune.jsonl"
    first = tune(g, "cortex-m4", log=log, workdir=tmp_path / "w")
    assert first["stem"]["measured"] >= 3
    # A 1-channel input: the flat packing wastes less than rounding every position to 4.
    assert (
        first["stem"]["schedule"] == {"kernel": "im2col", "cols": 2, "pack": "flat"}
        or first["stem"]["est_cycles"] <= first["stem"]["default_est_cycles"]
    )
    assert g.ops[0].schedule == first["stem"]["schedule"]
    again = tune(g, "cortex-m4", log=TuningLog(log))
    assert again["stem"]["measured"] == 0 and again["stem"]["schedule"] == first["stem"]["schedule"]


def test_coordinate_descent_beats_exhaustive_count():
    from tinytamer.micro.tuning import coordinate_descent

    knobs = {"a": list(range(6)), "b": list(range(6)), "c": list(range(6))}
    best, evaluations = coordinate_descent(knobs, lambda s: (s["a"] - 4) ** 2 + (s["b"] - 1) ** 2 + abs(s["c"] - 5))
    assert best == {"a": 4, "b": 1, "c": 5}
    assert evaluations < 6**3 / 4


@qemu
def test_odd_channel_counts_on_device(tmp_path):
    """5 channels: depthwise falls back to the portable kernel, conv pairs leave an odd
    channel, im2col pads 5 -> 8 channels; still bit-exact on the device."""
    g = random_graph(4, size=7, channels=5)
    rng = np.random.default_rng(4)
    xs = rng.integers(-128, 128, (3, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, x) for x in xs])
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=xs.reshape(len(xs), -1))
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)
