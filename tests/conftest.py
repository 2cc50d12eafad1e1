"""Shared fixtures: the default model is loaded once per test session and reused by every engine.

A guard keeps the `slow` marker honest: a test not marked slow that loads real model weights in this
process (a GGUF file of real size), or uses a fixture that did (its value is cached, so the load
shows only once), fails, saying so.

Every test runs with a persistent result cache of its own (`HALO_RESULT_CACHE_DIR`, see
docs/result_cache.md): results stored by one test never answer another's requests.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/dense_reference.py and friends

REAL_MODEL_BYTES = 20_000_000  # tiny random checkpoints the tests build are far smaller than any real model
_real_loads: list[str] = []  # files of real models loaded in this test process, in order
_real_model_fixtures: set[str] = {"checkpoint", "dense"}  # grows with every fixture seen loading one


def _share_the_cores() -> None:
    """Under pytest-xdist (the suite runs `-n logical`), each worker process gets its share of the cores.

    Torch's default is one thread per core in every process: two workers would run four OpenMP threads
    on two cores, and OpenMP threads that wait by spinning make every op many times slower when
    oversubscribed. OMP_NUM_THREADS is set too, so the processes a test starts (the `halo` command,
    servers, Ray actors) inherit the share.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_configure(config: pytest.Config) -> None:
    _share_the_cores()
    # Never the user's persistent result cache, even for what runs outside a test (module fixtures,
    # the processes they start); each test gets its own (`_own_result_cache`).
    results = os.environ["HALO_RESULT_CACHE_DIR"] = tempfile.mkdtemp(prefix="halo-results-")
    config.add_cleanup(lambda: shutil.rmtree(results, ignore_errors=True))
    from halo.engine import gguf_checkpoint

    load = gguf_checkpoint.load_gguf_checkpoint

    def counted(path: Path):  # the real loader, with real-sized loads written down
        if Path(path).stat().st_size >= REAL_MODEL_BYTES:
            _real_loads.append(str(path))
        return load(path)

    gguf_checkpoint.load_gguf_checkpoint = counted  # checkpoint.load_checkpoint looks it up at call time

    from halo.engine import checkpoint_cache

    read_entry = checkpoint_cache.read_entry

    def counted_hit(entry: checkpoint_cache.CacheEntry):  # a real model mapped from the cache is a real load too
        ckpt, reason = read_entry(entry)
        source = entry.source
        size = source.stat().st_size if source.is_file() else sum(f.stat().st_size for f in source.iterdir())
        if ckpt is not None and size >= REAL_MODEL_BYTES:
            _real_loads.append(str(source))
        return ckpt, reason

    checkpoint_cache.read_entry = counted_hit  # load_through_cache looks it up at call time


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    before = len(_real_loads)
    yield
    if len(_real_loads) > before:
        _real_model_fixtures.add(fixturedef.argname)


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_loads_before] = len(_real_loads)


_loads_before = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or item.get_closest_marker("slow") is not None or report.failed:
        return
    loaded = _real_loads[item.stash.get(_loads_before, len(_real_loads)) :]
    fixtures = _real_model_fixtures & set(getattr(item, "fixturenames", ()))
    if loaded or fixtures:
        what = f"loads {loaded[0]}" if loaded else f"uses the real-model fixture {sorted(fixtures)[0]!r}"
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} {what} but is not marked @pytest.mark.slow"


@pytest.fixture(autouse=True)
def _own_result_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty persistent result cache of its own, so a result stored by one test
    never answers another's request. Only the result cache moves: HALO_CACHE_DIR keeps the converted
    models, which every test shares (moving it would reconvert every model in every test)."""
    monkeypatch.setenv("HALO_RESULT_CACHE_DIR", str(tmp_path_factory.mktemp("result-cache")))


@pytest.fixture(scope="session")
def checkpoint():
    from halo.engine.checkpoint import load_checkpoint

    return load_checkpoint()


@pytest.fixture(scope="session")
def dense(checkpoint):
    from dense_reference import DenseReference

    return DenseReference(checkpoint)
