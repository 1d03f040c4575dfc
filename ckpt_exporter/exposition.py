"""Metric families built from snapshots, rendered once per change and served as bytes.

prometheus_client's renderer costs time per sample, so rendering every job's series on
every scrape would make a scrape cost grow with the number of jobs. Instead each job's series are
rendered (by prometheus_client, text and OpenMetrics) when its snapshot changes, kept as bytes per
metric family, and joined when a scrape finds something changed. Only the small block of exporter
self-metrics is rendered per scrape.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from ckpt_exporter.families import POLL_STATE_FIELDS
from ckpt_exporter.layout import Built, FamilyLayout, build, render, split_by_family
from ckpt_exporter.snapshot import JobSnapshot


@dataclass(frozen=True)
class _Fragment:
    """A job's rendered families: (family, sample lines), the stable ones apart from the others."""

    stable: tuple[tuple[str, bytes], ...]
    volatile: tuple[tuple[str, bytes], ...]  # and the poll state

    @classmethod
    def of(cls, rendered: list[tuple[str, bytes]], group: Callable[[str], str]) -> _Fragment:
        stable = tuple(item for item in rendered if group(item[0]) == "stable")
        return cls(stable, tuple(item for item in rendered if group(item[0]) != "stable"))


@dataclass
class _Prefix:
    """The gzip stream of the families that rarely change, up to where the volatile ones begin;
    `state` is the compressor there, copied to go on with the volatile families."""

    stable_version: int
    gzip: bytes
    state: zlib._Compress


@dataclass
class _Assembled:
    """A joined body, kept gzipped: the compressor's state after it is kept too, so that each
    scrape only compresses its own small tail and the result is one ordinary gzip member."""

    gzip_prefix: bytes
    gzip_state: zlib._Compress

    @classmethod
    def of(cls, prefix: _Prefix, chunks: Iterable[bytes]) -> _Assembled:
        """The prefix, then the chunks compressed one by one: the whole body is never one string
        in memory, and the GIL is held only while each chunk is joined (zlib releases it while it
        compresses)."""
        state = prefix.state.copy()
        parts = [prefix.gzip, *(state.compress(chunk) for chunk in chunks)]
        parts.append(state.flush(zlib.Z_SYNC_FLUSH))
        return cls(b"".join(parts), state)

    def body(self) -> bytes:
        return zlib.decompressobj(31).decompress(self.gzip_prefix)


GZIP_LEVEL = 1  # much faster than 6 on exposition text, for somewhat more bytes
REBUILD_AT_LEAST_EVERY = 1.0  # seconds: how far a body may lag while changes keep coming
FORMAT_KEPT_SECONDS = 600.0  # a format nobody asked for this long is no longer rebuilt ahead


class ExpositionCache:
    """Per-job series rendered once per change, joined into one body per format.

    A job's sample lines are the same bytes in the text format and in OpenMetrics (only the family
    headers differ), so each job is rendered once, and after most polls only its poll-state
    families (job_up, last success, counters) are rendered again.

    The families come in two runs: the stable ones (checkpoints, status, job info), which change
    when a checkpoint appears or a status moves, then the volatile ones (live training metrics,
    event counts, poll state), which change with nearly every poll of a running job. The gzip
    stream of the stable run is kept with its compressor, so a rebuild after polls that changed
    only volatile families compresses those alone.

    Thread-safe: the poller updates from the event loop, the HTTP server reads from its threads.
    By default the joined bodies are rebuilt lazily, by the first scrape after a change. Once
    `start()` is called, a background thread rebuilds them instead, once the changes pause (the
    end of a poll cycle) or at least every REBUILD_AT_LEAST_EVERY seconds while they go on, and
    never for more than a tenth of the time; so a scrape never pays for joining or compressing
    every job: it serves the latest body, at most a moment behind.
    """

    FORMATS = (False, True)  # openmetrics?

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layout = FamilyLayout()
        self._stable_version = 0  # bumped by a change to a stable family
        self._prefixes: dict[bool, _Prefix] = {}
        self._prefix_builds = dict.fromkeys(self.FORMATS, 0)
        self._fragments: dict[str, _Fragment] = {}  # job -> its rendered families
        self._snapshots: dict[str, JobSnapshot] = {}
        self._assembled: dict[bool, _Assembled] = {}
        self._served: dict[bool, float] = {}  # when each format was last asked for
        self._version = 0  # bumped by every change, so a rebuild never stores stale bodies
        self._changed = threading.Event()
        self._stop = threading.Event()  # set by stop(): the rebuild thread's waits end at once
        self._thread: threading.Thread | None = None

    def _render(self, built: Built) -> list[tuple[str, bytes]]:
        """(family, sample lines) of the built families, in exposition order."""
        names = self._layout.learn(built)
        _, _, lines = split_by_family(render(lambda: [metric for _, metric in built], False))
        return [(name, lines[name]) for name in names if name in lines]

    def update(self, job: JobSnapshot) -> None:
        """Publish a job's snapshot (renders what changed: after most polls, the poll state only)."""
        previous = self._snapshots.get(job.job_id)
        if previous == job:
            return
        old = self._fragments.get(job.job_id)
        if (
            previous is not None
            and old is not None
            and replace(previous, **{name: getattr(job, name) for name in POLL_STATE_FIELDS}) == job
        ):
            group = self._layout.group
            kept = tuple(item for item in old.volatile if group(item[0]) != "poll_state")
            fragment = _Fragment(old.stable, kept + tuple(self._render(build([job], ("poll_state",)))))
        else:
            fragment = _Fragment.of(self._render(build([job])), self._layout.group)
        stable_changed = old is None or old.stable != fragment.stable
        with self._lock:
            self._snapshots[job.job_id] = job
            self._fragments[job.job_id] = fragment
            self._changed_locked(stable_changed)

    def remove(self, job_id: str) -> None:
        with self._lock:
            if self._fragments.pop(job_id, None) is not None:
                del self._snapshots[job_id]
                self._changed_locked(stable_changed=True)

    def _changed_locked(self, stable_changed: bool) -> None:
        self._version += 1
        if stable_changed:
            self._stable_version += 1
        if self._thread is None:
            self._assembled.clear()  # lazy: the next scrape rebuilds
        else:
            self._changed.set()

    @property
    def version(self) -> int:
        """Counts the changes published so far."""
        return self._version

    def snapshots(self) -> dict[str, JobSnapshot]:
        with self._lock:
            return dict(self._snapshots)

    def _assemble(self, openmetrics: bool) -> tuple[int, _Assembled]:
        """The body of every job's series, family by family (jobs sorted by id), gzipped."""
        with self._lock:
            version, stable_version = self._version, self._stable_version
            fragments = [self._fragments[job_id] for job_id in sorted(self._fragments)]
            prefix = self._prefixes.get(openmetrics)
        names, stable = self._layout.order()
        header = self._layout.header

        def families(run: tuple[str, ...], part: str) -> Iterator[bytes]:
            # One pass over the jobs' families (most jobs have a few of them), then in order.
            collected: dict[str, list[bytes]] = {}
            for fragment in fragments:
                for name, lines in getattr(fragment, part):
                    collected.setdefault(name, []).append(lines)
            for name in run:
                if name in collected:
                    yield header(name, openmetrics) + b"".join(collected[name])

        if prefix is None or prefix.stable_version != stable_version:
            state = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            stable_body = b"".join(state.compress(c) for c in families(names[:stable], "stable"))
            prefix = _Prefix(stable_version, stable_body, state)
            with self._lock:
                self._prefixes[openmetrics] = prefix
                self._prefix_builds[openmetrics] += 1
        return version, _Assembled.of(prefix, families(names[stable:], "volatile"))

    def _current(self, openmetrics: bool) -> _Assembled:
        with self._lock:
            self._served[openmetrics] = time.monotonic()
            assembled = self._assembled.get(openmetrics)
        if assembled is None:
            version, assembled = self._assemble(openmetrics)
            with self._lock:
                if version == self._version:
                    assembled = self._assembled.setdefault(openmetrics, assembled)
        return assembled

    def body(self, openmetrics: bool) -> bytes:
        """The rendered job series (no OpenMetrics # EOF: the self-metrics block ends the body)."""
        return self._current(openmetrics).body()

    def gzip_body(self, openmetrics: bool, tail: bytes) -> bytes:
        """gzip(body + tail): the cached body was compressed once; only the tail is compressed now."""
        assembled = self._current(openmetrics)
        state = assembled.gzip_state.copy()
        return assembled.gzip_prefix + state.compress(tail) + state.flush()

    def stable_prefix_builds(self, openmetrics: bool) -> int:
        """How often the stable families' gzip stream was built for a format (it is kept between)."""
        with self._lock:
            return self._prefix_builds[openmetrics]

    # -- background rebuilds -----------------------------------------------------------------

    @property
    def rebuilding(self) -> bool:
        """The background rebuild thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, debounce: float = 0.25) -> None:
        self._thread = threading.Thread(
            target=self._rebuild_loop, args=(debounce,), name="render", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _rebuild_loop(self, debounce: float) -> None:
        cost, finished = 0.0, 0.0
        while True:
            self._changed.wait()
            if self._stop.is_set():
                return
            # Wait for a pause in the changes (the end of a poll cycle), but while a long cycle
            # goes on, rebuild at least every REBUILD_AT_LEAST_EVERY seconds; and spend at most a
            # tenth of the time on rebuilding (it joins and compresses every job).
            first = time.monotonic()
            while True:
                self._changed.clear()
                if self._stop.wait(debounce):
                    return
                if not self._changed.is_set() or time.monotonic() - first >= REBUILD_AT_LEAST_EVERY:
                    break
            if self._stop.wait(max(finished + 9 * cost - time.monotonic(), 0.0)):
                return
            self._changed.clear()
            started = time.monotonic()
            with self._lock:
                wanted = [f for f, at in self._served.items() if started - at < FORMAT_KEPT_SECONDS]
                for openmetrics in self.FORMATS:
                    if openmetrics not in wanted:
                        self._assembled.pop(openmetrics, None)  # built again if it is asked for
                        self._prefixes.pop(openmetrics, None)
            for openmetrics in wanted:
                _, assembled = self._assemble(openmetrics)
                with self._lock:
                    self._assembled[openmetrics] = assembled
            finished = time.monotonic()
            cost = finished - started
