"""Estimated cycles from executed instructions, by instruction class.

The Cortex-M4 figures are those of the ARM Cortex-M4 Technical Reference Manual
(ARM DDI 0439B), Section 3.3.1, Table 3-1 "Cortex-M4 instruction set summary":

====================================  ======================================
class                                 cycles (M4)
====================================  ======================================
ALU, move, shift, compare, extend,    1
SXTB16/UXTB16, saturate, bit field
MUL, MLA, MLS, SMULL/UMULL/SMLAL,     1 (the M4's single-cycle MAC unit)
SMLAD/SMUAD/SMLABB... (DSP MACs)
SDIV / UDIV                           12 (the table gives 2-12; we take the worst case)
LDR/STR single (B/H/SB/SH/word)       2, or 1 right after another load/store
                                      single (pipelined; TRM table footnote),
                                      also across a block boundary that no
                                      branch made (the session's fall-through)
LDRD / STRD                           3 (1 + N, N = 2)
LDM/STM/PUSH/POP of N registers       1 + N (+ P when it loads the PC)
branch taken (B, BL, BX, BLX, CBZ,    1 + P, P = 2 pipeline refill cycles
CBNZ, TBB/TBH, POP {pc}, LDR pc)      (the TRM gives 1-3)
branch not taken                      1
IT                                    1 (the TRM allows folding to 0)
====================================  ======================================

The Cortex-M7 has no public per-instruction table (a dual-issue six-stage
pipeline with a branch predictor).  Our M7 estimate keeps the classes above
with single-cycle loads and stores from tightly coupled memory and a one-cycle
refill (P = 1) for taken branches; it does not model dual issue, so it is an
upper bound for code that pairs well.  Both are estimates - the instruction
counts they are computed from are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tinytamer.errors import BackendMissing


@dataclass(frozen=True)
class CycleTable:
    name: str
    alu: int = 1
    mul: int = 1
    div: int = 12
    load_store: int = 2
    load_store_pipelined: int = 1
    multiple_base: int = 1
    dual: int = 3
    branch_refill: int = 2
    it: int = 1
    source: str = ""


CYCLE_TABLES = {
    "cortex-m4": CycleTable("cortex-m4", source="ARM Cortex-M4 TRM (DDI 0439B) Table 3-1"),
    "cortex-m7": CycleTable(
        "cortex-m7",
        load_store=1,
        dual=2,
        branch_refill=1,
        source="M4 classes, single-cycle TCM loads, P=1 (no public table)",
    ),
}
# The host build runs natively: it has no emulated instruction stream to count.

_SINGLE_LS = ("ldr", "str")
_DUAL_LS = ("ldrd", "strd")
_MULTI = ("ldm", "stm", "push", "pop", "vpush", "vpop", "vldm", "vstm")
_MUL_PREFIX = (
    "mul",
    "mla",
    "mls",
    "smul",
    "umul",
    "smla",
    "umla",
    "smua",
    "smus",
    "smls",
    "smmul",
    "smmla",
    "smmls",
    "umaal",
    "smlsd",
    "smlad",
)
_DIV = ("sdiv", "udiv")
_IT = re.compile(r"it[te]{0,3}")


@dataclass(frozen=True)
class BlockCost:
    """Static cost of one straight-line block; the taken-branch penalty is added at run time.

    ``first_ls`` / ``last_ls``: the block starts / ends with a single load or store.  The
    emulator also ends blocks where no branch is (at a page boundary, for one), and a load
    there still pipelines with the store or load before it: the session charges such a
    fall-through as one straight line (``CycleTable.load_store_pipelined``).
    """

    instructions: int
    cycles: int
    first_ls: bool = False
    last_ls: bool = False


def _base(mnemonic: str) -> str:
    # Strip width qualifiers (.w/.n) and the condition of branches only where it matters.
    return mnemonic.split(".")[0]


def _capstone():
    try:
        import capstone
    except ImportError as e:  # pragma: no cover - capstone is a core dependency
        raise BackendMissing("capstone", "pip install capstone") from e
    return capstone


def _regs(insn) -> int:
    capstone = _capstone()
    try:
        return sum(1 for op in insn.operands if op.type == capstone.arm_const.ARM_OP_REG)
    except capstone.CsError:
        return 1


class BlockCoster:
    """Disassembles each executed block once (capstone, Thumb M-class) and caches its cost."""

    def __init__(self, table: CycleTable) -> None:
        capstone = _capstone()
        self.table = table
        self.md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
        self.md.detail = True
        self.cache: dict[tuple[int, int], BlockCost] = {}

    def cost(self, code: bytes, address: int) -> BlockCost:
        key = (address, len(code))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        t = self.table
        n = cycles = 0
        prev_ls = first_ls = False
        for insn in self.md.disasm(code, address):
            n += 1
            m = _base(insn.mnemonic)
            if m.startswith(_MULTI):
                regs = _regs(insn) - (0 if m.startswith(("push", "pop", "vpush", "vpop")) else 1)
                c, ls = t.multiple_base + max(regs, 1), False
            elif m.startswith(_DUAL_LS):
                c, ls = t.dual, False
            elif m.startswith(_SINGLE_LS) and not m.startswith(("ldrex", "strex")):
                c, ls = (t.load_store_pipelined if prev_ls else t.load_store), True
            elif m.startswith(_DIV):
                c, ls = t.div, False
            elif m.startswith(_MUL_PREFIX):
                c, ls = t.mul, False
            elif _IT.fullmatch(m):
                c, ls = t.it, False
            else:
                c, ls = t.alu, False
            cycles += c
            first_ls = first_ls or (ls and n == 1)
            prev_ls = ls
        bc = BlockCost(n, cycles, first_ls, prev_ls)
        self.cache[key] = bc
        return bc
