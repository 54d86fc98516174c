"""A host-driven device session on an emulated Cortex-M (in the manner of microTVM's).

``with Session("cortex-m4", module) as sess:`` cross-compiles the device
runtime (kernels, start-up code) and the module (a generated model) into one
ELF, loads its segments into a unicorn emulator (flash at 0x0, SRAM at
0x20000000, as in runtime/cortexm.ld), and then lets the host allocate tensors
in device SRAM (a heap above the stack), write them, call a device function by
name and read results back.  Calls are strict (run at once) or lazy (queued
until a result is read or :meth:`Session.flush`).

Calls follow the AAPCS: arguments in r0-r3 (more on the stack), SP at the top
of the linked stack, LR pointing at an ordinary Thumb address in flash where
the run stops (not an 0xFFFFFFxx value: on M-profile that is an exception
return).  Before each call the free stack is painted, so the call's deepest stack use
is measured too.  With ``count=True`` every executed block is counted by a block hook,
its instructions disassembled once with capstone (so instructions of an IT
block whose condition fails are counted, unlike unicorn's per-instruction
hook) and its estimated cycles taken from :mod:`tinytamer.micro.cost`.

``profile`` names a memory profile (:mod:`tinytamer.micro.profiles`); under any but
``ideal`` the flash data reads and the block hook's fetch addresses feed a simulated
flash accelerator, and its wait-state cycles are added to the estimate (the hooks slow
the emulator, so the ideal profile installs none).  Flash data reads are counted from
the load instructions themselves, not by a memory hook: unicorn 2.1.4 leaves the IT
state stale after a hooked load inside an IT block (unicorn-engine/unicorn#2309), and
later instructions mis-execute.  The linked code is disassembled once (:func:`_loads`),
a code hook sits on each run of loads that may read flash, and it computes the loaded
addresses from the registers before the instruction runs (reading registers in a code
hook is safe; only writing the PC inside an IT block is not, unicorn PR #2269).
``check_memory=True`` hooks every gap between the regions a call may touch (the
``tt_arena`` buffer, the tensors passed to it, the stack, the flash image): a data
access that lands in one is recorded in :attr:`CallResult.stray` (the hooks sit on the
gaps, so a legal run pays only unicorn's range test).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinytamer.errors import BackendMissing, ModelError
from tinytamer.micro import toolchain
from tinytamer.micro.codegen import CModel
from tinytamer.micro.cost import CYCLE_TABLES, BlockCost, BlockCoster, CycleTable
from tinytamer.micro.profiles import MemoryModel, MemoryProfile, get_profile

FLASH_BASE, FLASH_SIZE = 0x00000000, 4 << 20
RAM_BASE, RAM_SIZE = 0x20000000, 4 << 20
# The last word of flash is never linked (the script would have to fill 4 MB): calls return here.
RETURN_ADDR = FLASH_BASE + FLASH_SIZE - 0x100
_PAINT = b"\xa5" * 8


@dataclass
class DeviceTensor:
    address: int
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass
class CallResult:
    """One device call: its return value (r0) and, when counting, its exact cost.

    ``est_cycles`` is under ``memory_profile``: ``core_cycles`` (the ideal profile's figure)
    plus ``memory_cycles`` charged for flash wait states.
    """

    function: str
    returned: int | None = None
    instructions: int = 0
    est_cycles: int = 0
    memory_profile: str = "ideal"
    core_cycles: int = 0
    memory_cycles: int = 0
    fetch_misses: int = 0
    flash_reads: int = 0
    data_misses: int = 0
    stack_bytes: int = 0
    # With check_memory: (pc, address, size, "read"/"write") of accesses outside the
    # call's regions (the first 16), and how many there were.
    stray: list[tuple[int, int, int, str]] = field(default_factory=list)
    stray_count: int = 0
    done: bool = False


@dataclass
class _Counter:
    """Per-call block execution counts; costs are summed once the call returns."""

    blocks: dict = field(default_factory=dict)
    # Blocks entered by falling through from the previous one: (previous, block) -> count.
    follows: dict = field(default_factory=dict)
    jumps: int = 0
    prev_end: int = -1
    prev_key: tuple = ()
    memory: MemoryModel | None = None


def _unicorn():
    try:
        import unicorn
        from unicorn import arm_const
    except ImportError as e:  # pragma: no cover - unicorn is a core dependency
        raise BackendMissing("unicorn", "pip install unicorn capstone") from e
    return unicorn, arm_const


class Session:
    """An emulated Cortex-M running a compiled module; see the module docstring."""

    def __init__(
        self,
        cpu: str = "cortex-m4",
        module: CModel | None = None,
        *,
        elf: str | Path | None = None,
        workdir: str | Path | None = None,
        lazy: bool = False,
        count: bool = True,
        max_instructions: int = 0,
        profile: str = "ideal",
        check_memory: bool = False,
    ) -> None:
        if cpu not in CYCLE_TABLES:
            raise ModelError(f"Session: unknown device '{cpu}'; choose one of {sorted(CYCLE_TABLES)}")
        self.profile: MemoryProfile = get_profile(profile, cpu)
        self.check_memory = check_memory
        if (module is None) == (elf is None):
            raise ModelError("Session: give exactly one of a generated module or an ELF file")
        self.cpu = cpu
        self.module = module
        self.elf = Path(elf).resolve() if elf is not None else None
        self.workdir = workdir
        self.lazy = lazy
        self.count = count
        self.max_instructions = max_instructions
        self.build: toolchain.ArmBuild | None = None
        self.symbols: dict[str, int] = {}
        self.symbol_sizes: dict[str, int] = {}
        self.history: list[CallResult] = []
        self._queue: list[tuple[CallResult, list]] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._uc = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        unicorn, arm_const = _unicorn()
        if self.elf is None:
            if self.workdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="tamer-micro-")
                self.workdir = self._tmp.name
            self.build = toolchain.arm_build(self.module, self.workdir, self.cpu)
            self.elf = self.build.elf
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
        model = {"cortex-m4": arm_const.UC_CPU_ARM_CORTEX_M4, "cortex-m7": arm_const.UC_CPU_ARM_CORTEX_M7}[self.cpu]
        uc.ctl_set_cpu_model(model)
        uc.mem_map(FLASH_BASE, FLASH_SIZE, unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC)
        uc.mem_map(RAM_BASE, RAM_SIZE, unicorn.UC_PROT_ALL)
        self._load_elf(uc)
        self._uc = uc
        self._heap = self.symbols["_tt_heap_start"]
        self._heap_end = self.symbols["_tt_heap_end"]
        self._counter = _Counter()
        self._coster = BlockCoster(CYCLE_TABLES[self.cpu])
        self._hook = None
        if self.count:
            if not self.profile.ideal:
                memory = self._counter.memory = MemoryModel(self.profile)
                loads = _FlashLoads(memory, _loads(self.elf, arm_const), self._flash_end, arm_const.UC_ARM_REG_APSR)
                # One hook per run of adjacent loads: unicorn tests every code hook's range
                # when it translates an instruction and again each time a hooked one runs.
                for begin, end in _runs(loads.at):
                    uc.hook_add(unicorn.UC_HOOK_CODE, _on_load, loads, begin, end)
            self._hook = uc.hook_add(unicorn.UC_HOOK_BLOCK, _on_block, self._counter)
            # New hooks only apply to translation blocks translated after a flush.
            uc.ctl_flush_tb()

    def close(self) -> None:
        if self._uc is not None:
            self.flush()
        self._uc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _load_elf(self, uc) -> None:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        self._flash_end = FLASH_BASE
        with open(self.elf, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD" or seg["p_filesz"] == 0:
                    continue
                # Initialised data is written at its run address: the session is the loader.
                uc.mem_write(seg["p_vaddr"], seg.data())
                if seg["p_paddr"] < FLASH_BASE + FLASH_SIZE:  # the image's extent in flash
                    self._flash_end = max(self._flash_end, seg["p_paddr"] + seg["p_filesz"])
            for sec in elf.iter_sections():
                if isinstance(sec, SymbolTableSection):
                    for sym in sec.iter_symbols():
                        if sym.name:
                            self.symbols[sym.name] = sym["st_value"]
                            self.symbol_sizes[sym.name] = sym["st_size"]

    # ------------------------------------------------------------------ tensors
    def alloc(self, shape: tuple[int, ...] | int, dtype=np.int8) -> DeviceTensor:
        """Reserve device SRAM for a tensor (8-byte aligned; freed when the session ends)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        addr = (self._heap + 7) & ~7
        if addr + nbytes > self._heap_end:
            raise ModelError(f"Session: device SRAM is full ({nbytes} bytes requested, {self._heap_end - addr} left)")
        self._heap = addr + nbytes
        return DeviceTensor(addr, nbytes, dt, shape)

    def write(self, t: DeviceTensor, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array, dtype=t.dtype)
        if a.size * a.itemsize != t.nbytes:
            raise ModelError(f"Session.write: {a.nbytes} bytes into a {t.nbytes}-byte tensor")
        self.flush()
        self._uc.mem_write(t.address, a.tobytes())

    def read(self, t: DeviceTensor) -> np.ndarray:
        self.flush()
        data = bytes(self._uc.mem_read(t.address, t.nbytes))
        return np.frombuffer(data, dtype=t.dtype).reshape(t.shape).copy()

    def read_bytes(self, address: int, nbytes: int) -> bytes:
        """Raw device memory (e.g. at a symbol's address), after running queued calls."""
        self.flush()
        return bytes(self._uc.mem_read(address, nbytes))

    # ------------------------------------------------------------------ calls
    def call(self, function: str, *args: DeviceTensor | int) -> CallResult:
        """Call a device function by name; strict sessions run it now, lazy ones queue it."""
        if function not in self.symbols:
            raise ModelError(f"Session: the device module has no function '{function}'")
        result = CallResult(function)
        self._queue.append((result, list(args)))
        self.history.append(result)
        if not self.lazy:
            self.flush()
        return result

    def flush(self) -> None:
        """Run every queued call in order."""
        queue, self._queue = self._queue, []
        for result, args in queue:
            self._run(result, args)

    def _run(self, result: CallResult, args: list) -> None:
        _, arm_const = _unicorn()
        uc, c = self._uc, self._counter
        entry = self.symbols[result.function] | 1
        values = [a.address if isinstance(a, DeviceTensor) else int(a) & 0xFFFFFFFF for a in args]
        sp = self.symbols["_estack"]
        stacked = values[4:]
        if stacked:
            sp -= 4 * len(stacked)
            sp &= ~7
            uc.mem_write(sp, b"".join(v.to_bytes(4, "little") for v in stacked))
        for reg, v in zip(
            (arm_const.UC_ARM_REG_R0, arm_const.UC_ARM_REG_R1, arm_const.UC_ARM_REG_R2, arm_const.UC_ARM_REG_R3),
            values,
            strict=False,
        ):
            uc.reg_write(reg, v)
        uc.reg_write(arm_const.UC_ARM_REG_SP, sp)
        uc.reg_write(arm_const.UC_ARM_REG_LR, RETURN_ADDR | 1)
        c.blocks, c.follows, c.jumps, c.prev_end, c.prev_key = {}, {}, 0, entry & ~1, ()
        if c.memory is not None:
            c.memory.reset()
        # Paint the free stack so the call's deepest stack use can be read back after it.
        bottom = self.symbols["_sstack"]
        uc.mem_write(bottom, _PAINT * ((sp - bottom) // len(_PAINT)))
        guards = self._guard(result, args) if self.check_memory else []
        try:
            uc.emu_start(entry, RETURN_ADDR, count=self.max_instructions)
        except Exception as e:  # unicorn raises UcError for faults
            pc = uc.reg_read(arm_const.UC_ARM_REG_PC)
            raise ModelError(f"Session: device call '{result.function}' faulted at pc 0x{pc:08x}: {e}") from e
        finally:
            for h in guards:
                uc.hook_del(h)
        pc = uc.reg_read(arm_const.UC_ARM_REG_PC)
        if pc != RETURN_ADDR:
            raise ModelError(
                f"Session: device call '{result.function}' stopped at 0x{pc:08x} "
                f"before returning (instruction limit {self.max_instructions})"
            )
        if self.count:
            result.instructions, result.est_cycles = _charge(
                c, lambda a, n: self._coster.cost(bytes(uc.mem_read(a, n)), a), CYCLE_TABLES[self.cpu]
            )
            result.core_cycles = result.est_cycles
            result.memory_profile = self.profile.name
            if c.memory is not None:
                m = c.memory.stats
                result.memory_cycles = m.cycles
                result.fetch_misses, result.flash_reads = m.fetch_misses, m.flash_reads
                result.data_misses = m.data_misses
                result.est_cycles += m.cycles
        painted = bytes(uc.mem_read(bottom, sp - bottom))
        untouched = len(painted) - len(painted.lstrip(_PAINT[:1]))
        result.stack_bytes = (sp - bottom) - untouched
        result.returned = uc.reg_read(arm_const.UC_ARM_REG_R0)
        result.done = True

    def _guard(self, result: CallResult, args: list) -> list:
        """Hooks on every gap between the regions the call may access (see the module
        docstring); returns them, to be removed after the call."""
        unicorn, _ = _unicorn()
        s = self.symbols
        allowed = [(s["_sstack"], s["_estack"])]
        if "tt_arena" in s:
            allowed.append((s["tt_arena"], s["tt_arena"] + self.symbol_sizes["tt_arena"]))
        allowed += [(a.address, a.address + a.nbytes) for a in args if isinstance(a, DeviceTensor)]
        gaps, at = [(self._flash_end, FLASH_BASE + FLASH_SIZE)], RAM_BASE
        for lo, hi in sorted(allowed):
            if lo > at:
                gaps.append((at, lo))
            at = max(at, hi)
        gaps.append((at, RAM_BASE + RAM_SIZE))
        # Memory hooks are kept here despite unicorn#2309 (see the module docstring): they sit
        # on the gaps, so a legal access never fires one, and the stale IT state could only
        # follow an access that is already reported as an error.
        kinds = unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE
        hooks = [self._uc.hook_add(kinds, _on_stray, result, lo, hi - 1) for lo, hi in gaps if hi > lo]
        self._uc.ctl_flush_tb()  # memory hooks are compiled into the translated blocks
        return hooks


def _charge(c: _Counter, cost: Callable[[int, int], BlockCost], table: CycleTable) -> tuple[int, int]:
    """Instructions and estimated core cycles of the blocks counted in ``c``; ``cost(address,
    size)`` prices one block."""
    instructions = cycles = 0
    costs = {}
    for (address, size), n in c.blocks.items():
        bc = costs[address, size] = cost(address, size)
        instructions += n * bc.instructions
        cycles += n * bc.cycles
    # A load or store that falls through from one block into the next pipelines as in
    # straight-line code (see BlockCost).
    saved = table.load_store - table.load_store_pipelined
    for (before, after), n in c.follows.items():
        if costs[before].last_ls and costs[after].first_ls:
            cycles -= n * saved
    # A block that does not start where the previous one ended was reached by a taken
    # branch (the entry itself is not); the final return is one more.
    return instructions, cycles + (c.jumps + 1) * table.branch_refill


def _on_block(uc, address: int, size: int, c: _Counter) -> None:
    key = (address, size)
    c.blocks[key] = c.blocks.get(key, 0) + 1
    if address != c.prev_end:
        c.jumps += 1
    elif c.prev_key:
        edge = (c.prev_key, key)
        c.follows[edge] = c.follows.get(edge, 0) + 1
    c.prev_end = address + size
    c.prev_key = key
    if c.memory is not None:
        c.memory.fetch(address, size)


@dataclass(frozen=True)
class _Load:
    """How to find the addresses one load instruction reads, from the registers before it.

    The first address is ``base + disp (+ index << shift)``; ``base`` is a unicorn
    register, or 0 with ``disp`` the absolute address (PC-relative forms).  ``offsets``
    are the accesses from there, one per memory access unicorn's ARM front end makes
    (LDRD and LDM: one per word; VLDR/VLDM of a D register: one 8-byte access, as in
    the QEMU 5 front end unicorn 2.1 is built on; the kernels use no VFP loads).
    ``passes`` has bit ``NZCV`` set for the flag values under which the instruction runs
    (all 16 outside an IT block).
    """

    size: int
    base: int
    disp: int
    index: int
    shift: int
    offsets: tuple[int, ...]
    passes: int


_ALWAYS = 0xFFFF


def _condition_table() -> dict[int, int]:
    from capstone import arm_const as a

    tests = {
        a.ARM_CC_EQ: lambda n, z, c, v: z,
        a.ARM_CC_NE: lambda n, z, c, v: not z,
        a.ARM_CC_HS: lambda n, z, c, v: c,
        a.ARM_CC_LO: lambda n, z, c, v: not c,
        a.ARM_CC_MI: lambda n, z, c, v: n,
        a.ARM_CC_PL: lambda n, z, c, v: not n,
        a.ARM_CC_VS: lambda n, z, c, v: v,
        a.ARM_CC_VC: lambda n, z, c, v: not v,
        a.ARM_CC_HI: lambda n, z, c, v: c and not z,
        a.ARM_CC_LS: lambda n, z, c, v: z or not c,
        a.ARM_CC_GE: lambda n, z, c, v: n == v,
        a.ARM_CC_LT: lambda n, z, c, v: n != v,
        a.ARM_CC_GT: lambda n, z, c, v: not z and n == v,
        a.ARM_CC_LE: lambda n, z, c, v: z or n != v,
    }
    return {
        cc: sum(1 << f for f in range(16) if test(f >> 3 & 1, f >> 2 & 1, f >> 1 & 1, f & 1))
        for cc, test in tests.items()
    }


def _code_ranges(elf) -> list[tuple[int, bytes]]:
    """(address, bytes) of the Thumb code in the executable sections: the ARM ELF mapping
    symbols ($t code, $d data) split out literal pools and tables, which would throw a
    linear disassembly off the instruction stream."""
    from elftools.elf.sections import SymbolTableSection

    marks: dict[int, list[tuple[int, bool]]] = {}
    for sec in elf.iter_sections():
        if isinstance(sec, SymbolTableSection):
            for sym in sec.iter_symbols():
                kind = sym.name.split(".")[0]
                if kind in ("$t", "$d", "$a") and isinstance(sym["st_shndx"], int):
                    marks.setdefault(sym["st_shndx"], []).append((sym["st_value"], kind == "$t"))
    ranges = []
    for i, sec in enumerate(elf.iter_sections()):
        if not sec["sh_flags"] & 0x4 or sec["sh_type"] != "SHT_PROGBITS":  # SHF_EXECINSTR
            continue
        lo, data = sec["sh_addr"], sec.data()
        # Without mapping symbols the whole section is taken for code.
        points = sorted(marks.get(i, [(lo, True)]))
        for (at, code), (nxt, _) in zip(points, [*points[1:], (lo + len(data), False)], strict=True):
            if code and nxt > at:
                ranges.append((at, data[at - lo : nxt - lo]))
    return ranges


def _loads(elf_path: Path, arm_const) -> dict[int, _Load]:
    """Every load in the linked code that may read flash, by address (see :class:`_Load`).

    Loads based on SP (POP included) read the stack, which is in SRAM, and are left out.
    PLD is a hint and reads nothing.
    """
    from capstone import arm_const as a
    from elftools.elf.elffile import ELFFile

    from tinytamer.micro.cost import _capstone

    capstone = _capstone()
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    md.detail = True
    regs = {getattr(a, f"ARM_REG_R{i}"): getattr(arm_const, f"UC_ARM_REG_R{i}") for i in range(13)}
    regs[a.ARM_REG_LR] = arm_const.UC_ARM_REG_LR
    conditions = _condition_table()
    loads: dict[int, _Load] = {}
    with open(elf_path, "rb") as f:
        ranges = _code_ranges(ELFFile(f))
    for lo, code in ranges:
        for insn in md.disasm(code, lo):
            m = insn.mnemonic.split(".")[0]
            table = m in ("tbb", "tbh")
            multiple = m.startswith(("ldm", "vldm"))
            if not (table or multiple or m.startswith(("ldr", "vldr"))):
                continue
            ops = insn.operands
            if multiple:  # ldm rn{!}, {list}: the base is the first operand
                base_reg, disp, index, shift = ops[0].reg, 0, 0, 0
                sizes = [8 if insn.reg_name(o.reg).startswith("d") else 4 for o in ops[1:]]
                if m.endswith("db"):  # decrement before: the lowest address is base - total
                    disp = -sum(sizes)
            else:
                mem = next(o for o in ops if o.type == a.ARM_OP_MEM)
                base_reg, disp = mem.mem.base, mem.mem.disp
                if insn.post_index:  # [rn], #imm: the access is at rn, the offset comes after
                    disp = 0
                index = regs[mem.mem.index] if mem.mem.index else 0
                shift = mem.shift.value if mem.shift.type == a.ARM_SFT_LSL else 0
                dest = ops[0]
                if m.startswith("ldrd"):
                    sizes = [4, 4]
                elif m.startswith("vldr") and insn.reg_name(dest.reg).startswith("d"):
                    sizes = [8]
                else:
                    sizes = [4]
            if base_reg == a.ARM_REG_SP:
                continue
            offsets = tuple(sum(sizes[:k]) for k in range(len(sizes)))
            if base_reg == a.ARM_REG_PC:
                # TBB/TBH read PC as the instruction's address + 4; literal loads use
                # Align(PC + 4, 4).
                pc = insn.address + 4 if table else (insn.address + 4) & ~3
                base, disp = 0, pc + disp
            else:
                base = regs[base_reg]
            passes = conditions.get(insn.cc, _ALWAYS)
            loads[insn.address] = _Load(insn.size, base, disp, index, shift, offsets, passes)
    return loads


def _runs(loads: dict[int, _Load]) -> list[tuple[int, int]]:
    """[begin, end] ranges covering the loads, each a run of loads one right after another
    (so no other instruction falls inside a hook's range)."""
    runs: list[list[int]] = []
    for at in sorted(loads):
        if runs and at == runs[-1][1] + loads[runs[-1][1]].size:
            runs[-1][1] = at
        else:
            runs.append([at, at])
    return [(b, e) for b, e in runs]


class _FlashLoads:
    """The loads a code hook watches and where their flash reads go."""

    def __init__(self, memory: MemoryModel, at: dict[int, _Load], flash_end: int, apsr: int) -> None:
        self.memory = memory
        self.at = at
        self.flash_end = flash_end
        self.apsr = apsr


def _on_load(uc, address: int, size: int, loads: _FlashLoads) -> None:
    ld = loads.at[address]  # the hooks cover runs of loads and nothing else
    if ld.passes != _ALWAYS and not ld.passes >> (uc.reg_read(loads.apsr) >> 28) & 1:
        return  # an IT block's instruction whose condition fails reads nothing
    ea = ld.disp
    if ld.base:
        ea += uc.reg_read(ld.base)
    if ld.index:
        ea += uc.reg_read(ld.index) << ld.shift
    for off in ld.offsets:
        a = (ea + off) & 0xFFFFFFFF
        if FLASH_BASE <= a < loads.flash_end:
            loads.memory.read(a)


def _on_stray(uc, access: int, address: int, size: int, value: int, result: CallResult) -> None:
    unicorn, arm_const = _unicorn()
    result.stray_count += 1
    if len(result.stray) < 16:
        kind = "write" if access == unicorn.UC_MEM_WRITE else "read"
        result.stray.append((uc.reg_read(arm_const.UC_ARM_REG_PC), address, size, kind))
