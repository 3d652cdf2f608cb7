"""A worker pool that runs the oldest request's work first, so a burst is answered in arrival order.

A search is several CPU jobs in a row (decode + detect + embed, then the index search). On a FIFO pool a
burst of N searches queues all N first jobs before any second one, so every search waits for the whole
burst and they all finish together (issue 15: 50 at once, p50 2.36 s against max 2.37 s). Here each job
carries its request's arrival number (`arrival`, a context variable the engine sets when a request starts,
which asyncio tasks inherit): the pool always takes the queued job of the earliest request, so a search
that has started is finished before later ones are begun and under a burst p50 is about half the max.
"""

from __future__ import annotations

import contextvars
import functools
import heapq
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

# The arrival number of the request the current code runs for; None outside any request (then a job gets a
# fresh number when it is submitted, which puts it behind every request already under way).
arrival: contextvars.ContextVar[int | None] = contextvars.ContextVar("sightline_arrival", default=None)
_arrivals = itertools.count()


def new_arrival() -> int:
    """A fresh arrival number, later than every one given so far."""
    return next(_arrivals)


@contextmanager
def request() -> Iterator[int]:
    """Mark the code inside as one request: its jobs share an arrival number (an outer request's, if any)."""
    current = arrival.get()
    if current is not None:
        yield current
        return
    token = arrival.set(new_arrival())
    try:
        yield arrival.get()  # type: ignore[misc]
    finally:
        arrival.reset(token)


def as_request(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate an async method so each call is one request (see `request`)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with request():
            return await fn(*args, **kwargs)

    return wrapper


class PriorityExecutor(Executor):
    """`workers` threads taking jobs in order of their request's arrival, then of submission."""

    def __init__(self, workers: int, name: str = "worker") -> None:
        self._heap: list[tuple[int, int, Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._shutdown = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:  # type: ignore[override]
        """Queue fn(*args, **kwargs) under the caller's arrival number; raises RuntimeError after shutdown."""
        key = arrival.get()
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            heapq.heappush(self._heap, (new_arrival() if key is None else key, next(self._seq), future, fn, args, kwargs))
            self._cond.notify()
        return future

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        with self._cond:
            return len(self._heap)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._shutdown:
                    self._cond.wait()
                if not self._heap:  # shut down and drained
                    return
                _, _, future, fn, args, kwargs = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting caller, as ThreadPoolExecutor does)
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; queued ones still run unless `cancel_futures`; with `wait`, join the workers."""
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for item in self._heap:
                    item[2].cancel()
                self._heap.clear()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
