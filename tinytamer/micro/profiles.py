"""Memory profiles: what a real part's flash costs on top of the core's cycle table.

:mod:`tinytamer.micro.cost` charges every load as if it came from zero-wait memory.  On a
real part code and constants sit in flash behind wait states and a small accelerator
(prefetch and instruction/data caches).  A profile states a part's clock, its flash wait
states for instruction fetch and for data reads, the accelerator's caches (lines x line
size, simulated fully associative with LRU replacement), and its flash and SRAM sizes.
SRAM/TCM is zero-wait in every profile.  :class:`MemoryModel` is fed by the emulator
session (the block hook's fetch addresses, the flash addresses its loads read) and
charges:

- an instruction fetch of a flash line that is neither in the instruction cache nor the
  line the prefetcher fetched after the previous one: ``fetch_wait`` cycles;
- a data read (weights, literal pools) of a flash line not in the data cache:
  ``data_wait`` cycles.

A miss fills the whole line (critical word first, the rest arriving while the core runs:
an assumption, the RMs do not give the refill timing cycle by cycle).  Figures come from
the documents named in each profile; the ones marked ``assumed`` could not be checked
against the document and are recalled values, to be confirmed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from tinytamer.errors import ModelError


@dataclass(frozen=True)
class Cache:
    lines: int
    line_bytes: int


@dataclass(frozen=True)
class MemoryProfile:
    name: str
    cpu: str | None  # None: any core (the ideal profile)
    clock_hz: float | None
    fetch_wait: int = 0
    data_wait: int = 0
    icache: Cache | None = None
    dcache: Cache | None = None
    prefetch: bool = False
    flash_bytes: int | None = None
    sram_bytes: int | None = None
    source: str = ""
    assumed: tuple[str, ...] = field(default=())

    @property
    def ideal(self) -> bool:
        return self.fetch_wait == 0 and self.data_wait == 0


PROFILES = {
    "ideal": MemoryProfile(
        "ideal", None, None, source="every access zero-wait: the core's cycle table alone (for kernel work)"
    ),
    "stm32l4r5": MemoryProfile(
        # MLPerf Tiny's reference board (NUCLEO-L4R5ZI), Cortex-M4F at 120 MHz.
        "stm32l4r5",
        "cortex-m4",
        120e6,
        fetch_wait=5,
        data_wait=5,
        icache=Cache(32, 32),
        dcache=Cache(8, 32),
        prefetch=True,
        flash_bytes=2 << 20,
        sram_bytes=640 << 10,
        source="ST RM0432 (STM32L4+), sec. 3.3.3 read access latency (5 wait states at "
        "100-120 MHz, range 1 boost) and 3.3.4 ART accelerator (prefetch, instruction "
        "cache 32 lines x 4x64 bit, data cache 8 lines x 4x64 bit); DS12023: 2 MB "
        "flash, 640 KB SRAM",
        assumed=(
            "wait states and cache geometry recalled from RM0432, not re-read here",
            "fully associative LRU caches; a line refill costs the wait states once",
        ),
    ),
    "stm32f746": MemoryProfile(
        # Cortex-M7 at 216 MHz, code and constants in flash over the AXIM bus.
        "stm32f746",
        "cortex-m7",
        216e6,
        fetch_wait=7,
        data_wait=7,
        icache=Cache(128, 32),
        dcache=Cache(128, 32),
        prefetch=True,
        flash_bytes=1 << 20,
        sram_bytes=320 << 10,
        source="ST RM0385 (STM32F75x/74x), sec. 3.3.2 (7 wait states at 210-216 MHz, "
        "2.7-3.6 V) and sec. 2.1 (4 KB L1 I-cache and 4 KB D-cache, 32-byte lines; "
        "1 MB flash; SRAM 64 KB DTCM + 240 KB SRAM1 + 16 KB SRAM2)",
        assumed=(
            "wait states recalled from RM0385, not re-read here",
            "the L1 caches stand for the ART too (flash over AXIM); the M7's "
            "set-associative caches are simulated fully associative LRU",
        ),
    ),
}
# The board a user deploying to a core most likely has: measure() reports under it.
BOARD = {"cortex-m4": "stm32l4r5", "cortex-m7": "stm32f746"}


def get_profile(name: str, cpu: str | None = None) -> MemoryProfile:
    """The profile ``name``; ModelError if unknown or made for another core than ``cpu``."""
    p = PROFILES.get(name)
    if p is None:
        raise ModelError(f"unknown memory profile '{name}'; choose one of {sorted(PROFILES)}")
    if cpu is not None and p.cpu is not None and p.cpu != cpu:
        raise ModelError(f"memory profile '{name}' is a {p.cpu} part, not a {cpu}")
    return p


class _Lru:
    def __init__(self, c: Cache) -> None:
        self.lines = c.lines
        self.shift = c.line_bytes.bit_length() - 1
        self.tags: OrderedDict[int, None] = OrderedDict()

    def hit(self, line: int) -> bool:
        """Look ``line`` up and fill it on a miss; True on a hit."""
        tags = self.tags
        if line in tags:
            tags.move_to_end(line)
            return True
        tags[line] = None
        if len(tags) > self.lines:
            tags.popitem(last=False)
        return False


@dataclass
class MemoryStats:
    """What one call did to flash, and the cycles it was charged for it."""

    fetch_misses: int = 0
    flash_reads: int = 0
    data_misses: int = 0
    cycles: int = 0


class MemoryModel:
    """The flash side of one profile, fed access by access (see the module docstring)."""

    def __init__(self, profile: MemoryProfile) -> None:
        if profile.icache is None or profile.dcache is None:
            raise ModelError(f"memory profile '{profile.name}' has no caches to simulate")
        self.profile = profile
        self.icache = _Lru(profile.icache)
        self.dcache = _Lru(profile.dcache)
        self.ishift = self.icache.shift
        self.dshift = self.dcache.shift
        self.last_line = -2
        self.stats = MemoryStats()

    def reset(self) -> MemoryStats:
        """Start a new call: counters to zero (the caches stay warm, as on a board)."""
        done, self.stats = self.stats, MemoryStats()
        return done

    def fetch(self, address: int, size: int) -> None:
        """A straight-line block of ``size`` bytes at ``address`` is fetched."""
        first, last = address >> self.ishift, (address + size - 1) >> self.ishift
        if first == last == self.last_line:
            return  # the common case: a loop body inside the line just fetched
        p, s = self.profile, self.stats
        for line in range(first, last + 1):
            sequential = line == self.last_line + 1
            if not self.icache.hit(line) and not (p.prefetch and sequential):
                s.fetch_misses += 1
                s.cycles += p.fetch_wait
            self.last_line = line

    def read(self, address: int) -> None:
        """A data read from flash."""
        s = self.stats
        s.flash_reads += 1
        if not self.dcache.hit(address >> self.dshift):
            s.data_misses += 1
            s.cycles += self.profile.data_wait
