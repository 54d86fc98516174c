"""ProxylessNAS's budget-aware derive (tinytamer.search.proxyless.derive_within): the most
probable path whose predicted cost fits every budget entry, the argmax path when it fits,
the exact top-k beam, and a clear error when nothing in the beam fits."""

from __future__ import annotations

import itertools
import math

import pytest

from tinytamer.search.budget import Budget
from tinytamer.search.proxyless import ProxylessError, derive_within, top_paths

# Three edges: option 0 is the most probable on each, edge 1's option 1 is a close second.
ALPHAS = [[2.0, 0.0, -1.0], [1.0, 0.9, -3.0], [3.0, 0.0]]
FLASH = [[500.0, 100.0, 50.0], [400.0, 100.0, 10.0], [300.0, 10.0]]  # per option
SRAM = [[10.0, 10.0, 10.0], [40.0, 5.0, 5.0], [10.0, 10.0]]


def cost(arch):
    return {
        "flash_bytes": 1000.0 + sum(FLASH[e][i] for e, i in enumerate(arch)),
        "sram_bytes": max(SRAM[e][i] for e, i in enumerate(arch)),
        "est_cycles": 1e4,
    }


def logp(alphas):
    return [[a - math.log(sum(math.exp(b) for b in row)) for a in row] for row in alphas]


def test_the_argmax_path_is_derived_when_it_fits():
    d = derive_within(ALPHAS, cost, Budget.parse({"flash": 1e6, "cycles": 2e4}))
    assert d.arch == d.argmax == (0, 0, 0)
    assert d.argmax_violations == [] and d.priced == 1


def test_a_flash_limit_the_argmax_breaks_derives_the_next_most_probable_path():
    # argmax (0, 0, 0): 1000 + 1200 = 2200 bytes; (0, 1, 0): 1900 fits 2000.
    d = derive_within(ALPHAS, cost, Budget.parse({"flash": 2000}))
    assert d.argmax == (0, 0, 0) and d.arch == (0, 1, 0)
    assert d.argmax_violations == ["flash_bytes 2200 > 2000"]


def test_an_sram_limit_the_argmax_breaks_derives_the_next_most_probable_path():
    d = derive_within(ALPHAS, cost, Budget.parse({"sram": 20, "cycles": 2e4}))
    assert d.arch == (0, 1, 0) and d.argmax_violations == ["sram_bytes 40 > 20"]


def test_the_derived_path_is_the_most_probable_of_all_that_fit():
    budget = Budget.parse({"flash": 1500, "sram": 20})
    d = derive_within(ALPHAS, cost, budget, width=18)
    lp = logp(ALPHAS)
    fitting = [a for a in itertools.product(*(range(len(r)) for r in ALPHAS)) if budget.fits(cost(a))]
    best = max(fitting, key=lambda a: sum(lp[e][i] for e, i in enumerate(a)))
    assert d.arch == best


def test_the_beam_is_the_exact_top_k():
    lp = logp(ALPHAS)
    every = sorted(
        ((sum(lp[e][i] for e, i in enumerate(a)), a) for a in itertools.product(range(3), range(3), range(2))),
        key=lambda c: (-c[0], c[1]),
    )
    for k in (1, 4, 7, 18, 40):
        got = top_paths(lp, k)
        assert [a for _, a in got] == [a for _, a in every[:k]]
    # ties go to the lower index, as argmax does
    assert top_paths([[0.0, 0.0], [0.0, 0.0]], 1)[0][1] == (0, 0)


def test_a_budget_nothing_fits_names_the_entry_and_the_smallest_value():
    with pytest.raises(ProxylessError, match=r"flash_bytes smallest predicted 1070 > limit 1000"):
        derive_within(ALPHAS, cost, Budget.parse({"flash": 1000, "sram": 100}), width=18)
    # within the beam only: the smallest found among the two most probable paths
    with pytest.raises(ProxylessError, match=r"2 most probable.*flash_bytes smallest predicted 1900 > limit 1100"):
        derive_within(ALPHAS, cost, Budget.parse({"flash": 1100}), width=2)


def test_entries_that_fit_apart_but_never_together_are_named():
    # path (0,) meets the flash limit only, path (1,) the SRAM limit only
    def split(arch):
        return {"flash_bytes": 100.0 * arch[0], "sram_bytes": 100.0 * (1 - arch[0])}

    with pytest.raises(ProxylessError, match=r"meets all entries at once.*flash_bytes 0 <= 50.*sram_bytes 0 <= 50"):
        derive_within([[0.0, 0.0]], split, Budget.parse({"flash": 50, "sram": 50}))


def test_hostile_settings_are_refused():
    with pytest.raises(ProxylessError, match="beam width"):
        derive_within(ALPHAS, cost, Budget.parse({"flash": 1e6}), width=0)
    with pytest.raises(ProxylessError, match="does not predict latency_ms"):
        derive_within(ALPHAS, cost, Budget.parse({"latency": 5}))
