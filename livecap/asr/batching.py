"""Micro-batching: calls from many threads that arrive within a short window
run as one batch.

Why: on a GPU one encoder run over B windows costs about as much as a run
over one (the device is far from saturated by a single 30 s window of a
small Whisper), so when several rooms are live, gathering the encoder calls
that fall due within a few milliseconds into one run raises the GPU's
throughput at the price of that wait. On a CPU a batch of B costs B times
one run, so batching buys nothing there and is off (window 0).

The first caller of a batch is its *leader*: it waits up to ``window_s``, or
until ``max_batch`` calls are pending, then runs ``run_batch`` on the items
of every caller in arrival order and settles one ``concurrent.futures.Future``
that all of them wait on; each takes its own row of the result, and an
exception from ``run_batch`` is raised in every caller of that batch, as a
Future raises it in every waiter. The batch size is bounded by the number of
threads that call concurrently (the inference executor's workers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class _Batch(Generic[In, Out]):
    def __init__(self) -> None:
        self.items: list[In] = []
        self.results: Future[list[Out]] = Future()


class MicroBatcher(Generic[In, Out]):
    """``batcher(item)`` returns ``run_batch([..., item, ...])[its index]``.

    ``run_batch`` must return one result per item, in order. With
    ``window_s == 0`` (or ``max_batch == 1``) every call goes straight
    through as a batch of one, with no locking.
    """

    def __init__(self, run_batch: Callable[[list[In]], list[Out]], window_s: float, max_batch: int = 8) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"need window_s >= 0 and max_batch >= 1, not {window_s}, {max_batch}")
        self._run_batch = run_batch
        self.window_s = window_s
        self.max_batch = max_batch
        self._condition = threading.Condition()
        self._open: _Batch[In, Out] | None = None
        """The batch that new calls join; None while no leader is waiting."""

    @property
    def enabled(self) -> bool:
        return self.window_s > 0 and self.max_batch > 1

    def __call__(self, item: In) -> Out:
        if not self.enabled:
            return self._checked([item])[0]
        with self._condition:
            batch = self._open
            leader = batch is None
            if batch is None:
                batch = self._open = _Batch()
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= self.max_batch:
                self._open = None  # full: later calls start the next batch
                self._condition.notify_all()
            elif leader:
                self._condition.wait_for(lambda: self._open is not batch, self.window_s)
                if self._open is batch:
                    self._open = None
        if leader:
            self._run(batch)
        return batch.results.result()[index]

    def _run(self, batch: _Batch[In, Out]) -> None:
        """Run the closed ``batch`` (its items no longer change) and settle its future."""
        try:
            batch.results.set_result(self._checked(batch.items))
        except BaseException as error:  # raised again in every caller, this one included
            batch.results.set_exception(error)

    def _checked(self, items: list[In]) -> list[Out]:
        results = self._run_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        return results
