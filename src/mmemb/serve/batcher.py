"""Dynamic batching over one Embedder, in lanes so that one-forward requests never wait behind generation.

A *job* is one request's items, all in one mode. Each lane is one worker thread with its own bounded queue:

    take the oldest job; wait until `max_batch` items of its mode are queued or `max_wait_s` has passed since
    it arrived; encode those jobs' items in one `Embedder.encode` call; hand each job its rows.

With `lanes="split"` (the default) disc and nothink jobs (one forward, tens of ms) go to the *fast* lane and
the generating modes (gen, think, adaptive: up to seconds of decoding) to the *slow* lane. The slow lane
decodes continuously (`Embedder.stream`): a request's row leaves the decoding batch as it ends, and while
rows run, queued requests of the same mode join in the free slots; each request is answered as soon as all
its rows are done, not when the batch is. Both threads
share the model (torch releases the GIL; `Embedder.tokenizer_lock` guards the tokenizer), so a disc request
runs beside a long generation instead of after it. On Linux the slow lane's thread runs at a lower CPU
priority (SLOW_NICE), so when both lanes want the cores the fast one gets them. `lanes="shared"` is one lane
for everything: the head-of-line baseline that `benchmarks/bench_serve.py` measures against.

A batch that fails is retried one job at a time, so a bad item fails its own request only.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..embedder import concat_rows
from ..types import Embeddings, Sample

FAST_MODES = ("disc", "nothink")  # one forward pass, no generation


class Cancelled(Exception):
    """The job was cancelled before it was answered: its client left, or the server is shutting down."""


class QueueFull(Exception):
    """The lane's queue holds `max_queue` items already. `retry_after` is a whole number of seconds."""

    def __init__(self, lane: str, queued: int, retry_after: int) -> None:
        super().__init__(f"the {lane} queue is full ({queued} items waiting); retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    samples: list[Sample]
    mode: str
    max_new_tokens: int | None = None
    future: Future = field(default_factory=Future)  # -> Embeddings, rows in `samples` order
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # its request went away: dropped if queued, its rows stop if decoding

    def cancel(self) -> None:
        self.cancelled = True
        self.future.cancel()  # a queued job: dropped when its lane reaches it

    def is_cancelled(self) -> bool:
        return self.cancelled

    @property
    def key(self) -> tuple:  # jobs with the same key can share one encode call
        return (self.mode, self.max_new_tokens)


class Lane:
    def __init__(
        self, name, embedder, max_batch: int, max_wait_s: float, max_queue: int, on_batch=None, nice: int = 0
    ):
        self.name, self.embedder, self.nice = name, embedder, nice
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.on_batch: Callable[[str, int, float], None] | None = on_batch  # (lane, items, seconds)
        self.jobs: deque[Job] = deque()
        self.queued = 0  # items in self.jobs
        self.busy = 0  # items being encoded now
        self.running: list[Job] = []  # the jobs being encoded now
        self.started = 0.0  # when the running batch started
        self.item_seconds = 0.05  # running mean of seconds per item; Retry-After = this x items ahead
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"mmemb-lane-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        with self.cond:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            if self.queued + len(job.samples) > self.max_queue:
                running = (time.monotonic() - self.started) / self.busy if self.busy else 0.0
                wait = (self.queued + self.busy) * max(self.item_seconds, running)
                raise QueueFull(self.name, self.queued, max(1, math.ceil(wait)))
            self.jobs.append(job)
            self.queued += len(job.samples)
            self.cond.notify()
        return job.future

    def close(self, cancel: bool = False, timeout: float = 60) -> None:
        """Stop taking jobs; with `cancel`, cancel every queued and running one (a decoding row stops at its
        next token) instead of finishing them. Waits up to `timeout` seconds for the lane's thread."""
        with self.cond:
            self.closed = True
            if cancel:
                for j in [*self.jobs, *self.running]:
                    j.cancel()
            self.cond.notify_all()
        self.thread.join(timeout=timeout)

    def _take(self) -> list[Job] | None:
        """Under the lock: wait for a batch (module docstring) and remove its jobs from the queue."""
        while not self.jobs:
            if self.closed:
                return None
            self.cond.wait()
        first = self.jobs[0]
        while not self.closed:
            ready = sum(len(j.samples) for j in self.jobs if j.key == first.key)
            left = first.arrived + self.max_wait_s - time.monotonic()
            if ready >= self.max_batch or left <= 0:
                break
            self.cond.wait(left)
        batch, rest, n = [], deque(), 0
        for j in self.jobs:
            if j.key == first.key and (n == 0 or n + len(j.samples) <= self.max_batch):
                batch.append(j)
                n += len(j.samples)
            else:
                rest.append(j)
        self.jobs, self.queued = rest, self.queued - n
        # a job whose request went away (client disconnected) is dropped; the others can no longer be cancelled
        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
        self.busy, self.started = sum(len(j.samples) for j in batch), time.monotonic()
        self.running = list(batch)
        return batch

    def _loop(self) -> None:
        lower_priority(self.nice)  # before the first torch call: its OpenMP workers inherit it
        while True:
            with self.cond:
                batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            t0 = time.perf_counter()
            n = self._stream(batch) if batch[0].mode not in FAST_MODES else self._run(batch)
            seconds = time.perf_counter() - t0
            with self.cond:
                self.busy, self.running = 0, []
                self.item_seconds = 0.8 * self.item_seconds + 0.2 * seconds / max(1, n)
            if self.on_batch:
                self.on_batch(self.name, n, seconds)

    def _run(self, batch: list[Job]) -> int:
        samples = [s for j in batch for s in j.samples]
        mode, cap = batch[0].key
        try:
            emb = self.embedder.encode(samples, mode=mode, batch_size=self.max_batch, max_new_tokens=cap)
        except Exception as e:  # noqa: BLE001 - handed to the request(s), never kills the lane
            if len(batch) > 1:  # find the job at fault: each alone
                for j in batch:
                    self._run([j])
            elif batch:
                batch[0].future.set_exception(e)
            return len(samples)
        start = 0
        for j in batch:
            rows = slice(start, start + len(j.samples))
            start += len(j.samples)
            answer(j, lambda j=j, rows=rows: take_rows(emb, rows))
        return len(samples)

    def _more(self, mode: str) -> list[Job]:
        """Queued jobs of `mode` (any max_new_tokens: caps are per row), taken without waiting."""
        with self.cond:
            taken = [j for j in self.jobs if j.mode == mode]
            if not taken:
                return []
            self.jobs = deque(j for j in self.jobs if j.mode != mode)
            n = sum(len(j.samples) for j in taken)
            self.queued -= n
            taken = [j for j in taken if j.future.set_running_or_notify_cancel()]  # drop abandoned requests
            self.busy += sum(len(j.samples) for j in taken)
            self.running += taken
            return taken

    def _stream(self, batch: list[Job]) -> int:
        """The generating modes: one continuous decode that takes in queued jobs of its mode while it runs.
        Returns the items embedded. A failure fails no other request: the jobs not yet answered are rerun
        one at a time."""
        mode = batch[0].mode
        rows: deque[tuple[Job, int]] = deque((j, i) for j in batch for i in range(len(j.samples)))
        owner: list[tuple[Job, int]] = []  # pulled row k -> (job, row in job)
        done: dict[int, list] = {}  # id(job) -> its finished rows by position
        open_jobs: dict[int, Job] = {id(j): j for j in batch}

        def pull(n: int) -> list:
            if not rows:
                for j in self._more(mode):
                    open_jobs[id(j)] = j
                    rows.extend((j, i) for i in range(len(j.samples)))
            out = []
            while rows and len(out) < n:
                j, i = rows.popleft()
                owner.append((j, i))
                out.append((j.samples[i], j.max_new_tokens, j.is_cancelled))
            return out

        try:
            for k, emb in self.embedder.stream(pull, mode, batch_size=self.max_batch):
                j, i = owner[k]
                got = done.setdefault(id(j), [None] * len(j.samples))
                got[i] = emb
                if all(x is not None for x in got):
                    answer(j, lambda j=j, got=got: concat_rows(got, mode))
                    del open_jobs[id(j)]
        except Exception:  # noqa: BLE001 - rerun the unanswered jobs alone, so only the bad one fails
            for j in open_jobs.values():
                self._run([j])
        return len(owner)


SLOW_NICE = 10  # the slow lane's niceness above the fast lane's: Linux's scheduler then gives the fast
# lane ~9x the CPU share when both want it, so a disc request barely waits behind decoding and generation


def lower_priority(nice: int) -> None:
    """Make the calling thread (and the threads it starts from now on, such as its OpenMP team) `nice` steps
    nicer. Linux only (there a thread id names one thread), best-effort: elsewhere, or if refused, a no-op."""
    if nice <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


def answer(job: Job, rows: Callable[[], Embeddings]) -> None:
    """Hand a job its rows, or Cancelled when it was cancelled while it ran (its rows may have been cut
    short: a cancelled job never gets a partial answer)."""
    if job.cancelled:
        job.future.set_exception(Cancelled("cancelled: its client left, or the server is shutting down"))
    else:
        job.future.set_result(rows())


def take_rows(emb: Embeddings, rows: slice) -> Embeddings:
    """Rows `rows` of an Embeddings (every per-row list sliced alike)."""
    return Embeddings(
        vectors=np.ascontiguousarray(emb.vectors[rows]),
        mode=emb.mode,
        **{k: getattr(emb, k)[rows] for k in Embeddings.ROW_FIELDS},
    )


class Batcher:
    """The lanes over one embedder (module docstring). `submit(job)` returns a Future of its Embeddings."""

    def __init__(
        self, embedder, *, max_batch=16, max_wait_s=0.005, max_queue=256, lanes="split", on_batch=None
    ):
        if lanes not in ("split", "shared"):
            raise ValueError(f"lanes must be 'split' or 'shared', got {lanes!r}")
        names = ("fast", "slow") if lanes == "split" else ("shared",)
        self.lanes = {n: Lane(n, embedder, max_batch, max_wait_s, max_queue, on_batch,
                              SLOW_NICE if n == "slow" else 0) for n in names}  # fmt: skip

    def lane_for(self, mode: str) -> Lane:
        if "shared" in self.lanes:
            return self.lanes["shared"]
        return self.lanes["fast" if mode in FAST_MODES else "slow"]

    def submit(self, job: Job) -> Future:
        return self.lane_for(job.mode).submit(job)

    def queued(self) -> dict[str, int]:
        return {n: lane.queued for n, lane in self.lanes.items()}

    def running(self) -> dict[str, int]:
        return {n: lane.busy for n, lane in self.lanes.items()}

    def close(self, cancel: bool = False, timeout: float = 60) -> None:
        for lane in self.lanes.values():
            lane.close(cancel, timeout)
