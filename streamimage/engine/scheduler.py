"""The hash passes of every store layer, scheduled ahead of streaming: their order, ``-j``
at a time, split passes, and the lifetime of their spool files.

ASYNC; knows no image format and no Layer (layers/store.py wraps each result).
Rule 1: each pass runs in a forked child owned by the task that forked it (workers.py) or,
with ``processes=False``, in a worker thread; ``-j`` passes at a time (the limiter).
Rule 2: a pass spools what its stream pass will copy while the budget lasts; spooling is
never a failure. A large layer (SPLIT_MIN_ENTRIES) is framed by two children (a head and
a helper), its walk cut where its entries are, its sha256 computed in order by the head;
a small one (THREAD_MAX_ENTRIES) is hashed in a thread. A layer's spool files stay open
until ``release``; ``close`` releases them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.from_thread import check_cancelled

from streamimage.engine.cache import LayerCache
from streamimage.engine.hashing import LayerHash, hash_layer, hash_layer_head
from streamimage.engine.listing import fewer_entries, file_bytes, split_walk
from streamimage.engine.pipeline import grow_pipe
from streamimage.engine.spool import SpoolBudget, SpooledPart, SpoolFile, spool_part
from streamimage.engine.timeline import Timeline
from streamimage.engine.walk import LayerPart
from streamimage.engine.workers import SHARED, run_in_child
from streamimage.options import Compression
from streamimage.tarheader import HeaderEncoder

SPLIT_MIN_ENTRIES = 4096  # a layer with fewer is framed by one process: a second costs more
THREAD_MAX_ENTRIES = 512  # a layer with fewer is hashed in a thread: a fork costs more
HEAD_SHARE = 0.4  # of a split layer's entries, framed by the head (it also hashes the rest)
# What a split is weighed with (measured on benchmarks' default and nixpkgs corpora, 2 cores:
# a lone pass of 50k-54k entries and 0.5-0.9 GB took 1.9-2.0 s; the stream reached a layer
# after 0.35 GB/s of the layers before it): a split costs CPU (a second spool written and
# read), which pays only when the stream would otherwise wait for much of a lone pass.
PASS_PER_ENTRY = 40e-6  # seconds a lone hash pass takes per entry (bytes folded in)
STREAM_RATE = 350e6  # bytes per second the stream gets through the layers before
STREAM_PER_ENTRY = 15e-6  # seconds per entry of the layers before
SPLIT_WAIT = 0.5  # split when the stream reaches a layer before this share of a lone pass


@dataclass(slots=True)
class _Split:
    """What a split pass's head and helper tasks share."""

    rest: LayerPart | None = None  # what the helper frames: set by the head, if needed
    prepared: anyio.Event = field(default_factory=anyio.Event)  # set by the head
    helper: SpoolFile | None = None  # the helper's spool file; None: not needed
    records: Connection | None = None  # the helper's worker sends its segments on it
    part: SpooledPart | None = None  # what the helper spooled
    helped: anyio.Event = field(default_factory=anyio.Event)  # set by the helper


@dataclass(slots=True)
class _Slot:
    """One layer's pass: its result once done, and its spool files until released."""

    done: anyio.Event = field(default_factory=anyio.Event)
    decided: anyio.Event = field(default_factory=anyio.Event)  # done, or left to its stream
    result: LayerHash | None = None
    spool_fds: list[int] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)


class HashPass:
    """The hash pass of every store layer, run ahead of streaming, ``workers`` at a time:
    the first layer first, so that streaming starts as soon as can be, then the layers
    with the most store paths, likely the largest (streamLayeredImage puts all that
    doesn't get a layer of its own into the last one), so that the longest pass doesn't
    start last and keep the stream waiting. Each pass spools what it framed while the
    budget lasts, for the layer's stream pass to copy; a large layer is framed by two
    processes (splittable). ``close`` closes every spool."""

    def __init__(
        self,
        layers: Sequence[Sequence[str]],
        encoder: HeaderEncoder,
        compression: Compression,
        *,
        workers: int,
        processes: bool = True,
        spool: SpoolBudget | None = None,
        cache: LayerCache | None = None,
    ) -> None:
        self.compression = compression  # what each pass compresses to, besides hashing
        self._stream_misses: Callable[[], Awaitable[bool]] | None = None  # start's
        self._layers = layers
        self._encoder = encoder
        self._limiter = anyio.CapacityLimiter(workers)
        self._slots = [_Slot() for _ in layers]
        self._processes = processes
        self._budget = spool
        self._cache = cache
        self._plans: dict[int, tuple[int, int, tuple[str, ...]]] = {}  # split_walk's, by layer
        self._lone: set[int] = set()  # large layers hashed by one process (_lone_passes)
        self._lone_known = anyio.Event()
        self._tg: TaskGroup | None = None  # start's: where spools are kept (_keep)
        self._missed: set[int] = set()  # layers the cache said it lacks: hashed, not asked

    def timeline(self, index: int) -> Timeline:
        """When layer ``index``'s passes ran (its stream pass's times are the caller's)."""
        return self._slots[index].timeline

    def spool_fds(self, index: int) -> Sequence[int]:
        """Layer ``index``'s spool files, open until ``release``."""
        return self._slots[index].spool_fds

    def start(
        self, tg: TaskGroup, *, stream_misses: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Start the passes: the first layer's at once, the others once their entries are
        counted (from directory listings, in a thread, while the first layer hashes), the
        layers of most entries first, so that the longest passes don't start last and keep
        the stream waiting: nixpkgs orders layers by popularity (glibc first), and its
        largest layer (a Python or Node environment) comes near the end. With a digest
        cache, the layers it holds are looked up first, in the stream's order.

        ``stream_misses``, when given, is asked (once it can answer) whether the layers
        the cache can't give are to be hashed by their stream instead (``streamed``): a
        push to a new repository uploads them as it hashes them. Not compressed layers."""
        self._tg = tg
        if stream_misses is not None and not self.compression.enabled:
            self._stream_misses = stream_misses
        if self._cache is not None:
            tg.start_soon(self._start_with_cache, tg, self._cache)
        else:
            tg.start_soon(self._start_unheld, tg, set())

    async def _streams_misses(self) -> bool:
        return self._stream_misses is not None and await self._stream_misses()

    async def _start_with_cache(self, tg: TaskGroup, cache: LayerCache) -> None:
        # Layers the cache holds (a walk each, likely no hash pass) are looked up in the
        # stream's order, so that a warm run streams from the start (a lookup of all
        # hundred layers of a nixpkgs image, largest first, kept the stream waiting for
        # layer 2 until the end: 4.7 s warm against 3.8 cold), and at once: none waits
        # for the others' entries to be counted, nor for a split pass's helper to give
        # back its slot (the default corpus's lookups took 1.15 s in a row, 0.6 s so).
        held = await cache.held(self._layers) or set()  # None: the cache failed
        for index in range(len(self._layers)):
            if index not in held:
                self._missed.add(index)
                if cache.warning is None:  # else the warning says why
                    self._slots[index].timeline.cache = "miss (new key)"
        first = bool(self._layers) and 0 not in held and self._stream_misses is None
        if first:  # its pass before the lookups: the stream needs it first
            self._start_pass(tg, 0)
        for index in sorted(held):
            tg.start_soon(self._look_up, tg, index)
        await self._start_unheld(tg, held | ({0} if first else set()))

    async def _start_unheld(self, tg: TaskGroup, started: set[int]) -> None:
        """Start the passes of the layers not ``started`` (held by the cache, or the first
        layer's pass) or leave them to their stream: the first layer's at once, then the
        others, most entries first."""
        unheld = [index for index in range(len(self._layers)) if index not in started]
        if self._stream_misses is not None and await self._streams_misses():
            for index in unheld:
                self._slots[index].decided.set()
            return
        if 0 in unheld:
            self._start_pass(tg, 0)
        await self._start_the_rest(tg, started)

    async def _start_the_rest(self, tg: TaskGroup, held: set[int]) -> None:
        """Start the passes of the layers after the first that the cache doesn't hold, most
        entries first; then find which large layers are better hashed by one process."""
        rest = [index for index in range(1, len(self._layers)) if index not in held]
        plans = await anyio.to_thread.run_sync(
            lambda: [split_walk(self._layers[index], HEAD_SHARE) for index in rest]
        )
        for index, plan in zip(rest, plans, strict=True):
            self._plans[index] = plan
        for index in sorted(rest, key=lambda index: -self._plans[index][0]):
            self._start_pass(tg, index)
        try:
            large = any(self._plans[index][0] >= SPLIT_MIN_ENTRIES for index in rest)
            if self.splittable() and large:  # meanwhile: a large layer's head waits for it
                self._lone = await anyio.to_thread.run_sync(self._lone_passes)
        finally:
            self._lone_known.set()

    async def _look_up(self, tg: TaskGroup, index: int) -> None:
        """Layer ``index``, which the cache holds: its lookup (a walk of its store paths);
        a store changed since is hashed after all, in a pass queued then."""
        async with self._limiter:
            hit = await self._from_cache(index)
        if hit:
            self._slots[index].done.set()
            return
        self._missed.add(index)
        if await self._streams_misses():
            self._slots[index].decided.set()
        else:
            self._start_pass(tg, index)

    def _lone_passes(self) -> set[int]:
        """The large layers better hashed by one process: those the stream reaches after
        more than SPLIT_WAIT of a lone pass, busy with the layers before (whose big files
        are counted: an lstat each, for the layers of few entries only). nixpkgs' largest
        layer comes near the end: there a split only took both cores from the layers the
        stream needed first (3.79 s against 3.54 s unsplit); a large layer near the
        beginning is split (3.36 s against 3.71 s)."""
        lone: set[int] = set()
        reached = 0.0  # seconds until the stream reaches the layer
        for index, paths in enumerate(self._layers):
            plan = self._plans.get(index)  # the first layer's: its pass's, if done yet
            entries = (plan or split_walk(paths, HEAD_SHARE))[0]
            lone_pass = entries * PASS_PER_ENTRY
            if entries >= SPLIT_MIN_ENTRIES:
                if index > 0 and reached >= SPLIT_WAIT * lone_pass:
                    lone.add(index)
                reached += lone_pass  # its bytes unknown: as long as its own pass
            else:
                reached += file_bytes(paths) / STREAM_RATE + entries * STREAM_PER_ENTRY
        return lone

    def _start_pass(self, tg: TaskGroup, index: int) -> None:
        # The limiter lets tasks in as they queued; a split pass's helper queues right
        # behind its head, so a head never waits for a helper that can't get a slot.
        if not self.splittable():
            tg.start_soon(self._hash, index)
        else:
            state = _Split()
            tg.start_soon(self._hash_head, index, state)
            tg.start_soon(self._help, index, state)

    def splittable(self) -> bool:
        """Whether a large layer may be framed by two worker processes: the first (the
        head) frames and hashes the beginning of its walk while the second (the helper)
        frames the rest into a spool of its own, which the head then hashes. The walk is
        cut where the layer's entries are (split_walk), inside a store path if need be:
        nixpkgs' auto-layering gives the largest store path (a Python or Node
        environment, LLVM) a layer of its own, and it comes first. Uncompressed layers in
        worker processes only, with a spool and two workers."""
        return (
            self._budget is not None
            and self._processes
            and not self.compression.enabled
            and self._limiter.total_tokens >= 2
        )

    async def _plan(self, index: int) -> tuple[int, int, tuple[str, ...]]:
        """split_walk of layer ``index``: its entries, and where to cut it."""
        timeline = self._slots[index].timeline
        timeline.hash_start = timeline.hash_start or time.monotonic()
        plan = self._plans.get(index)
        if plan is None:
            plan = await anyio.to_thread.run_sync(split_walk, self._layers[index], HEAD_SHARE)
            self._plans[index] = plan  # _lone_passes counts the first layer with it
        return plan

    async def _hash(self, index: int) -> None:
        async with self._limiter:
            if not await self._from_cache(index):
                started = time.time()
                entries = (await self._plan(index))[0] if self._processes else None
                await self._hash_whole(index, entries)
                await self._remember(index, started)
        self._slots[index].done.set()

    async def _from_cache(self, index: int) -> bool:
        """Finish layer ``index`` from the digest cache, if it has the layer as it is now."""
        if self._cache is None or index in self._missed:
            return False
        timeline = self._slots[index].timeline
        timeline.hash_start = time.monotonic()
        paths = self._layers[index]
        plan = self._plans.get(index)
        if plan is not None:
            small = plan[0] < THREAD_MAX_ENTRIES
        else:  # a lookup that starts before the entries are counted: count up to there
            small = await anyio.to_thread.run_sync(fewer_entries, paths, THREAD_MAX_ENTRIES)
        hit = await self._cache.lookup(paths, timeline, small=small)
        if hit is None:
            return False
        self._slots[index].spool_fds.extend(hit.spool_fds)  # kept frames: released as a spool
        self._finish(index, hit.found)
        return True

    async def _remember(self, index: int, started: float) -> None:
        """Tell the cache what the pass found; the spool of a layer it keeps is kept too,
        in a task of its own (copies of the spool fds: the stream pass releases them)."""
        cache, slot = self._cache, self._slots[index]
        if cache is None:
            return
        found = slot.result
        assert found is not None
        paths = self._layers[index]
        if not await cache.remember(paths, found, slot.timeline, started):
            return
        if cache.keeps_frames(found) and slot.spool_fds and self._tg is not None:
            fds = [os.dup(fd) for fd in slot.spool_fds]
            self._tg.start_soon(self._keep, cache, paths, found, fds)

    @staticmethod
    async def _keep(
        cache: LayerCache, paths: Sequence[str], found: LayerHash, fds: list[int]
    ) -> None:
        try:
            await anyio.to_thread.run_sync(cache.keep_frames, paths, found, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _open_spool(self, index: int, part: int = 0) -> SpoolFile | None:
        """A spool for layer ``index``'s pass (part 1: a split pass's helper), or None."""
        target = None if self._budget is None else self._budget.open(2 * index + part)
        if target is not None:
            self._slots[index].spool_fds.append(target.fd)
        return target

    async def _hash_whole(self, index: int, entries: int | None = None) -> None:
        """Layer ``index`` hashed by one worker: a process, but for a layer of fewer than
        THREAD_MAX_ENTRIES ``entries`` (a fork costs more than its Python work)."""
        timeline = self._slots[index].timeline
        timeline.hash_start = timeline.hash_start or time.monotonic()
        target = self._open_spool(index)
        paths = self._layers[index]
        if self._processes and (entries is None or entries >= THREAD_MAX_ENTRIES):
            # A process of its own: the hash pass's Python work doesn't contend for the
            # GIL with the stream pass; cancelling kills the worker.
            result = await run_in_child(hash_layer, paths, self._encoder, self.compression, target)
        else:
            result = await anyio.to_thread.run_sync(
                hash_layer, paths, self._encoder, self.compression, target, check_cancelled
            )
        self._finish(index, result)

    async def _hash_head(self, index: int, split: _Split) -> None:
        async with self._limiter:
            try:
                if await self._from_cache(index):
                    split.prepared.set()  # the helper is not needed
                else:
                    started = time.time()
                    entries, at, place = await self._plan(index)
                    if entries >= SPLIT_MIN_ENTRIES and index > 0:
                        await self._lone_known.wait()
                    lone = entries < SPLIT_MIN_ENTRIES or index in self._lone
                    if lone or at >= len(self._layers[index]):
                        split.prepared.set()  # the helper is not needed
                        await self._hash_whole(index, entries)
                    else:
                        await self._split_pass(index, split, at, place)
                    await self._remember(index, started)
            finally:
                split.prepared.set()
        self._slots[index].done.set()

    async def _split_pass(self, index: int, split: _Split, at: int, place: tuple[str, ...]) -> None:
        """Layer ``index`` hashed by two processes, its walk cut at ``place`` in its store
        path ``at``, if there is room for two spools."""
        head = self._open_spool(index)
        helper = None if head is None else self._open_spool(index, 1)
        if head is None or helper is None:  # no room for two spools: one pass
            self.release(index)
            split.prepared.set()  # the helper is not needed
            await self._hash_whole(index)
        else:
            receive, split.records = SHARED.Pipe(duplex=False)
            grow_pipe(split.records.fileno())
            split.helper = helper
            first, split.rest = LayerPart.halves(self._layers[index], at, place)
            split.prepared.set()
            try:
                await self._run_head(index, split, first, head, receive)
            finally:
                receive.close()

    async def _run_head(
        self, index: int, split: _Split, first: LayerPart, head: SpoolFile, records: Connection
    ) -> None:
        assert split.helper is not None
        assert split.rest is not None
        self._slots[index].timeline.parts = 2
        result = await run_in_child(
            hash_layer_head,
            first,
            split.rest,
            self._encoder,
            head,
            split.helper.fd,
            records,
        )
        await split.helped.wait()  # its worker has ended, and its witness is here
        if split.part is None:  # it gave up: its spool is not the layer's
            self._budget_count(2 * index + 1, 0)
            with contextlib.suppress(OSError):
                os.ftruncate(split.helper.fd, 0)
        else:
            result.witness.extend(split.part.witness)
            if result.spooled is not None:  # the layer is in both spool files
                size = result.spooled.size + split.part.size
                result = dataclasses.replace(
                    result, spooled=dataclasses.replace(result.spooled, size=size)
                )
        self._finish(index, result)

    async def _help(self, index: int, split: _Split) -> None:
        """A split pass's helper: frames the later part of layer ``index`` into its spool,
        sending each segment to the head's worker, which hashes them as they come."""
        try:
            async with self._limiter:
                await split.prepared.wait()
                if split.helper is None or split.records is None or split.rest is None:
                    return
                split.part = await run_in_child(
                    spool_part,
                    split.rest,
                    self._encoder,
                    split.helper,
                    split.records,
                )
        finally:
            if split.records is not None:
                split.records.close()
            split.helped.set()

    def _budget_count(self, counter: int, size: int) -> None:
        if self._budget is not None:
            self._budget.count(counter, size)

    def _finish(self, index: int, result: LayerHash) -> None:
        slot = self._slots[index]
        slot.result = result
        if result.spooled is None:
            self.release(index)  # nothing spooled: the files go now
        self._slots[index].timeline.hash_end = time.monotonic()
        self._slots[index].decided.set()

    async def streamed(self, index: int) -> bool:
        """Whether layer ``index`` is left to its stream to hash (``start``'s
        ``stream_misses``): no pass, no cache entry; its digests are those the stream
        finds (``streamed_as``). Waits until that is decided."""
        slot = self._slots[index]
        await slot.decided.wait()
        return slot.result is None

    async def streamed_as(self, index: int, found: LayerHash, started: float) -> None:
        """Layer ``index``'s stream hashed it as ``found`` (its stream began at
        time.time() ``started``): its result, kept in the digest cache as a pass's is."""
        slot = self._slots[index]
        slot.result = found
        slot.timeline.hash_end = time.monotonic()
        slot.done.set()
        await self._remember(index, started)

    def known(self, index: int) -> LayerHash:
        """The hash of layer ``index``, whose pass has finished (``result`` answered)."""
        result = self._slots[index].result
        if result is None:
            raise RuntimeError(f"layer {index + 1}: asked for before its hash pass finished")
        return result

    def finished(self, index: int) -> LayerHash | None:
        """The hash of layer ``index`` if its pass has finished, else None; never waits."""
        return self._slots[index].result

    async def result(self, index: int) -> LayerHash:
        """The hash of layer ``index`` (0-based), once its pass has finished."""
        slot = self._slots[index]
        await slot.done.wait()
        assert slot.result is not None
        return slot.result

    def release(self, index: int) -> None:
        """Close layer ``index``'s spools (it was streamed, or won't be), if it has any."""
        slot = self._slots[index]
        for fd in slot.spool_fds:
            os.close(fd)
        slot.spool_fds.clear()
        self._budget_count(2 * index, 0)  # its passes are over: the counters are ours now
        self._budget_count(2 * index + 1, 0)

    def close(self) -> None:
        """Close every spool still open (after a failure, or a layer not streamed)."""
        for index in range(len(self._slots)):
            self.release(index)
