"""Executors: ordered, seeded results identical in process, in a pool and on Ray; crashes retried once."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from tinytamer.cli import AddressOpt, ExecutorOpt, WorkersOpt
from tinytamer.errors import BackendMissing, TamerError
from tinytamer.search.executor import LocalExecutor, RayExecutor, make_executor, trial_seed

# Trials run in worker processes: they live at the top level so that they pickle by reference.


def draw(item: int, seed: int) -> tuple:
    """Depends on the item, the seed and the seeded RNGs: differs if any seeding depended on scheduling."""
    return item, seed, float(torch.rand(1)), float(np.random.rand()), random.random()


def _first_call(folder: str, i: int) -> bool:
    """True the first time it is asked about item i (a marker file survives a killed worker)."""
    marker = Path(folder) / f"called-{i}"
    if marker.exists():
        return False
    marker.touch()
    return True


def flaky(item: tuple[str, int], seed: int) -> tuple:
    folder, i = item
    if i == 1 and _first_call(folder, i):
        raise RuntimeError("transient failure\nwith a second line")
    return draw(i, seed)


def broken(item: int, seed: int) -> int:
    if item == 2:
        raise ValueError("always fails\nsecond line")
    return item


def killed_once(item: tuple[str, int], seed: int) -> tuple:
    folder, i = item
    if i == 1 and _first_call(folder, i):
        os.kill(os.getpid(), signal.SIGKILL)
    return draw(i, seed)


def killed_always(item: int, seed: int) -> int:
    if item == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


@pytest.fixture(scope="module")
def pool():
    with LocalExecutor(2, progress=False, echo=lambda _: None) as ex:
        yield ex


def quiet(messages: list[str] | None = None) -> LocalExecutor:
    return LocalExecutor(0, progress=False, echo=(messages if messages is not None else []).append)


def test_trial_seed_is_fixed_by_seed_and_index():
    assert trial_seed(3, 5) == trial_seed(3, 5)
    assert len({trial_seed(s, i) for s in range(3) for i in range(20)}) == 60
    assert all(0 <= trial_seed(0, i) < 2**32 for i in range(10))
    with pytest.raises(TamerError, match="seed"):
        trial_seed(-1, 0)


def test_in_process_results_are_ordered_seeded_and_leave_the_callers_rngs_alone():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    threads = torch.get_num_threads()
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    results = quiet().map(draw, range(5), seed=7)
    assert [r.index for r in results] == list(range(5)) and all(r.ok and r.attempts == 1 for r in results)
    assert [r.value[0] for r in results] == list(range(5))
    assert [r.seed for r in results] == [trial_seed(7, i) for i in range(5)]
    assert [r.value for r in results] == [r.value for r in quiet().map(draw, range(5), seed=7)]
    assert [r.value for r in results] != [r.value for r in quiet().map(draw, range(5), seed=8)]
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    assert torch.get_num_threads() == threads


def test_empty_map():
    assert quiet().map(draw, [], seed=0) == []


def test_a_crash_is_reported_and_retried_once(tmp_path):
    messages: list[str] = []
    results = quiet(messages).map(flaky, [(str(tmp_path), i) for i in range(3)], seed=1)
    assert all(r.ok for r in results) and [r.attempts for r in results] == [1, 2, 1]
    # The retry runs with the same seed: the result is the one a first success would give.
    assert [r.value for r in results] == [r.value for r in quiet().map(draw, range(3), seed=1)]
    assert len(messages) == 1 and messages[0].startswith("trial 1 (")
    assert "RuntimeError: transient failure; retrying once" in messages[0] and "\n" not in messages[0]


def test_a_second_crash_gives_a_failed_result_not_an_exception():
    messages: list[str] = []
    results = quiet(messages).map(broken, range(4))
    assert [r.value for r in results] == [0, 1, None, 3]
    failed = results[2]
    assert not failed.ok and failed.error == "ValueError: always fails" and failed.attempts == 2
    assert len(messages) == 2 and "recorded as failed" in messages[1]


def test_pool_gives_the_in_process_results(pool, tmp_path):
    local = [r.value for r in quiet().map(draw, range(6), seed=11)]
    assert [r.value for r in pool.map(draw, range(6), seed=11)] == local
    # And again, on the same (reused) workers.
    assert [r.value for r in pool.map(draw, range(6), seed=11)] == local
    results = pool.map(flaky, [(str(tmp_path), i) for i in range(3)], seed=11)
    assert [r.value for r in results] == local[:3] and [r.attempts for r in results] == [1, 2, 1]


def test_pool_survives_a_killed_worker(pool, tmp_path):
    messages: list[str] = []
    pool.echo = messages.append
    try:
        results = pool.map(killed_once, [(str(tmp_path), i) for i in range(4)], seed=2)
        assert all(r.ok for r in results) and [r.attempts for r in results] == [1, 2, 1, 1]
        assert [r.value for r in results] == [r.value for r in quiet().map(draw, range(4), seed=2)]
        assert len(messages) == 1 and messages[0].startswith("trial 1 (")
        assert messages[0].endswith(" failed: worker process died (SIGKILL); retrying once")
        results = pool.map(killed_always, range(3))
        assert [r.value for r in results] == [None, 1, 2]
        assert results[0].error == "worker process died (SIGKILL)" and results[0].attempts == 2
    finally:
        pool.echo = lambda _: None
    # A worker that died while idle is replaced before it is given a trial.
    idle = pool._workers[0].process
    os.kill(idle.pid, signal.SIGKILL)
    idle.join(timeout=10)
    results = pool.map(broken, range(2))
    assert [r.value for r in results] == [0, 1] and [r.attempts for r in results] == [1, 1]


def test_pool_needs_a_picklable_function(pool):
    with pytest.raises(TypeError, match="picklable"):
        pool.map(lambda item, seed: item, range(2))
    # The pool is restarted after the error and still works.
    assert [r.value for r in pool.map(broken, range(2))] == [0, 1]


def test_make_executor_checks_its_options(monkeypatch):
    assert isinstance(make_executor("local", workers=0), LocalExecutor)
    with pytest.raises(TamerError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(TamerError, match="address is for the ray executor"):
        make_executor("local", address="auto")
    with pytest.raises(TamerError, match=">= 0"):
        make_executor("local", workers=-1)
    with pytest.raises(TamerError, match="leave workers at 0"):
        make_executor("ray", address="auto", workers=2)
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(BackendMissing, match=r"tinytamer\[ray\]"):
        make_executor("ray")


# --- Ray: one private 2-CPU instance on this machine for the module (starting Ray takes seconds) ---


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is the optional extra: pip install "tinytamer[ray]"')
    # Workers import the trials by module name; this test module is not on their path.
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(__import__(__name__))
    # "local": a new instance here, never a cluster named by RAY_ADDRESS or already running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(__import__(__name__))


def test_ray_gives_the_local_results_and_retries_crashes(ray_cluster, tmp_path):
    messages: list[str] = []
    ex = make_executor("ray", progress=False, echo=messages.append)
    assert isinstance(ex, RayExecutor)
    local = [r.value for r in quiet().map(draw, range(6), seed=5)]
    with ex:
        assert [r.value for r in ex.map(draw, range(6), seed=5)] == local
        for name in ("raised", "killed"):
            (tmp_path / name).mkdir()
        raised = ex.map(flaky, [(str(tmp_path / "raised"), i) for i in range(3)], seed=5)
        killed = ex.map(killed_once, [(str(tmp_path / "killed"), i) for i in range(3)], seed=5)
        failed = ex.map(broken, range(3))
    # The instance was already running: the executor leaves it up.
    assert ray_cluster.is_initialized()
    assert [r.value for r in raised] == local[:3] and [r.attempts for r in raised] == [1, 2, 1]
    assert [r.value for r in killed] == local[:3] and [r.attempts for r in killed] == [1, 2, 1]
    assert any("trial 1" in m and "worker process died" in m and "retrying once" in m for m in messages)
    assert [r.value for r in failed] == [0, 1, None] and failed[2].error == "ValueError: always fails"


def test_cli_executor_options_reach_make_executor():
    app = typer.Typer()

    @app.command()
    def search(executor: ExecutorOpt = "local", address: AddressOpt = None, workers: WorkersOpt = 0) -> None:
        with make_executor(executor, address=address, workers=workers, progress=False) as ex:
            print(type(ex).__name__, getattr(ex, "processes", None))

    runner = CliRunner()
    assert runner.invoke(app, ["--workers", "3"]).output.split() == ["LocalExecutor", "3"]
    assert runner.invoke(app, ["--workers", "-1"]).exit_code == 2
    failed = runner.invoke(app, ["--executor", "local", "--address", "auto"])
    assert isinstance(failed.exception, TamerError)
