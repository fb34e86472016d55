"""LocalEngine as an Engine: protocol, one lazily created session, a bounded worker pool."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import onnxruntime
import pytest

from photoroom_bg import Engine, SegmentOptions
from photoroom_bg.engines.local import LocalEngine
from photoroom_bg.errors import ConfigurationError, ValidationError


class CountingSession:
    """Wraps a real InferenceSession; records creations, threads and peak concurrency."""

    instances: ClassVar[list[CountingSession]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).instances.append(self)
        self._session = REAL_SESSION(*args, **kwargs)
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.threads: set[str] = set()

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            return self._session.run(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


REAL_SESSION = onnxruntime.InferenceSession


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingSession]:
    CountingSession.instances = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", CountingSession)
    return CountingSession


def test_local_engine_satisfies_the_engine_protocol() -> None:
    engine = LocalEngine()

    assert isinstance(engine, Engine)
    assert engine.name == "local:u2netp"
    assert engine.bills is False
    assert "local:u2netp" in repr(engine)


async def test_one_session_is_created_lazily_and_shared_by_all_workers(
    counting: type[CountingSession], example: Callable[[str], bytes]
) -> None:
    engine = LocalEngine(max_workers=2, threads_per_worker=1)
    assert counting.instances == []

    images = [example(name) for name in ("chelsea", "coffee", "rocket")] * 2
    results = await asyncio.gather(*(engine.process(data, SegmentOptions()) for data in images))
    await engine.aclose()

    assert len(results) == len(images)
    assert len(counting.instances) == 1
    session = counting.instances[0]
    assert session.peak <= 2
    assert session.threads
    assert all(name.startswith("photoroom_bg-local") for name in session.threads)
    assert threading.current_thread().name not in session.threads


async def test_a_closed_engine_refuses_work(example: Callable[[str], bytes]) -> None:
    engine = LocalEngine(max_workers=1)
    await engine.process(example("coffee"), SegmentOptions())
    await engine.aclose()
    await engine.aclose()  # closing twice is harmless

    with pytest.raises(ConfigurationError, match="closed"):
        await engine.process(example("coffee"), SegmentOptions())


def test_providers_fall_back_to_the_cpu() -> None:
    engine = LocalEngine(providers=["NoSuchExecutionProvider"])

    with pytest.warns(RuntimeWarning, match="offers no NoSuchExecutionProvider here"):
        providers = engine.providers

    assert providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, "max_workers must be at least 1"),
        ({"threads_per_worker": 0}, "threads_per_worker must be at least 1"),
        # these passed, to fail later in the process pool
        ({"max_workers": 1.5}, "max_workers must be a whole number"),
        ({"max_workers": True}, "max_workers must be a whole number"),
        ({"threads_per_worker": 2.5}, "threads_per_worker must be a whole number"),
    ],
)
def test_worker_counts_below_one_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LocalEngine(**kwargs)


def test_defaults_use_every_cpu_once() -> None:
    engine = LocalEngine()

    cpus = len(os.sched_getaffinity(0))
    assert engine.max_workers == min(4, cpus)
    assert engine.max_workers * engine.threads_per_worker <= cpus


def test_without_numpy_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)
    monkeypatch.delitem(sys.modules, "photoroom_bg.engines._onnx_models", raising=False)

    with pytest.raises(ConfigurationError, match=r"pip install 'photoroom-bg\[local\]'"):
        LocalEngine()


def test_without_onnxruntime_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = LocalEngine()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)

    with pytest.raises(ConfigurationError, match=r"pip install 'photoroom-bg\[local\]'"):
        engine.providers  # noqa: B018  (the property creates the session)
