"""Metric families built from snapshots, rendered once per change and served as bytes.

prometheus_client's renderer costs a few microseconds per sample, so rendering every job's series on
every scrape would make a scrape cost grow with the number of jobs. Instead each job's series are
rendered (by prometheus_client, text and OpenMetrics) when its snapshot changes, kept as bytes per
metric family, and joined when a scrape finds something changed. Only the small block of exporter
self-metrics is rendered per scrape.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics
from prometheus_client.registry import Collector

from ckpt_exporter.models import METRIC_FIELDS
from ckpt_exporter.snapshot import JobSnapshot

CHECKPOINT_PREFIX = "openai_fine_tuning_checkpoint_"

_METRIC_HELP = {
    "train_loss": "Training loss of the mini-batch at the checkpoint's step, as reported by the API.",
    "train_mean_token_accuracy": "Training mean token accuracy at the checkpoint's step.",
    "valid_loss": "Validation loss of a validation batch at the checkpoint's step.",
    "valid_mean_token_accuracy": "Validation mean token accuracy at the checkpoint's step.",
    "full_valid_loss": "Validation loss over the full validation set at the checkpoint's step.",
    "full_valid_mean_token_accuracy": (
        "Mean token accuracy over the full validation set at the checkpoint's step."
    ),
}


def job_families(jobs: Iterable[JobSnapshot]) -> list[Metric]:
    """All per-job families, in exposition order, for the given jobs."""
    step_labels = ["job_id", "step"]
    metrics = {
        name: GaugeMetricFamily(CHECKPOINT_PREFIX + name, _METRIC_HELP[name], labels=step_labels)
        for name in METRIC_FIELDS
    }
    created = GaugeMetricFamily(
        CHECKPOINT_PREFIX + "created_timestamp_seconds",
        "Unix time at which the checkpoint was created.",
        labels=step_labels,
    )
    info = InfoMetricFamily(
        "openai_fine_tuning_checkpoint",
        "Identity of a checkpoint: its id and the name of the checkpoint model.",
        labels=step_labels,
    )
    latest_step = GaugeMetricFamily(
        "openai_fine_tuning_job_latest_step",
        "Highest step_number among the job's checkpoints.",
        labels=["job_id"],
    )
    status = GaugeMetricFamily(
        "openai_fine_tuning_job_status",
        "1 for the job's current status (validating_files, queued, running, succeeded, failed, "
        "cancelled, or any other the API reports).",
        labels=["job_id", "status"],
    )
    job_info = InfoMetricFamily(
        "openai_fine_tuning_job",
        "Identity of a job: base model, fine-tuned model (empty until it succeeds), suffix, account.",
        labels=["job_id"],
    )
    trained_tokens = GaugeMetricFamily(
        "openai_fine_tuning_job_trained_tokens",
        "Billable tokens the job trained on (reported once the job has finished).",
        labels=["job_id"],
    )
    estimated_finish = GaugeMetricFamily(
        "openai_fine_tuning_job_estimated_finish_timestamp_seconds",
        "Unix time at which the API estimates a running job will finish.",
        labels=["job_id"],
    )
    up = GaugeMetricFamily(
        "ckpt_exporter_job_up", "1 when the latest poll of the job succeeded, else 0.", labels=["job_id"]
    )
    last_success = GaugeMetricFamily(
        "ckpt_exporter_job_last_success_timestamp_seconds",
        "Unix time of the latest successful poll of the job.",
        labels=["job_id"],
    )
    discovered = CounterMetricFamily(
        "ckpt_exporter_checkpoints_discovered",
        "Checkpoints that appeared in the API after the exporter's first read of the job.",
        labels=["job_id"],
    )
    errors = CounterMetricFamily(
        "ckpt_exporter_api_errors",
        "Failed polls and unusable API data, by job and reason.",
        labels=["job_id", "reason"],
    )
    for job in jobs:
        for checkpoint in job.checkpoints:
            labels = [job.job_id, str(checkpoint.step_number)]
            for name in METRIC_FIELDS:
                value = getattr(checkpoint.metrics, name)
                if value is not None:
                    metrics[name].add_metric(labels, value)
            created.add_metric(labels, float(checkpoint.created_at))
            info.add_metric(
                labels,
                {"checkpoint_id": checkpoint.id, "model": checkpoint.fine_tuned_model_checkpoint or ""},
            )
        if job.latest_step is not None:
            latest_step.add_metric([job.job_id], float(job.latest_step))
        if job.job is not None:
            status.add_metric([job.job_id, job.job.status], 1.0)
            job_info.add_metric(
                [job.job_id],
                {
                    "model": job.job.model or "",
                    "fine_tuned_model": job.job.fine_tuned_model or "",
                    "suffix": job.job.suffix,
                    "account": job.account,
                },
            )
            if job.job.trained_tokens is not None:
                trained_tokens.add_metric([job.job_id], float(job.job.trained_tokens))
            if job.job.estimated_finish is not None:
                estimated_finish.add_metric([job.job_id], float(job.job.estimated_finish))
        up.add_metric([job.job_id], 1.0 if job.up else 0.0)
        if job.last_success is not None:
            last_success.add_metric([job.job_id], job.last_success)
        discovered.add_metric([job.job_id], float(job.discovered_total))
        for reason, count in job.errors:
            errors.add_metric([job.job_id, reason], float(count))
    return [
        *metrics.values(),
        created,
        info,
        latest_step,
        status,
        job_info,
        trained_tokens,
        estimated_finish,
        up,
        last_success,
        discovered,
        errors,
    ]


class FamiliesCollector(Collector):
    """Adapts a function returning families to prometheus_client's Collector interface."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families()


def render(families: Callable[[], Iterable[Metric]], openmetrics: bool) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families))
    if openmetrics:
        return render_openmetrics(registry)  # type: ignore[no-untyped-call,no-any-return]
    return render_text(registry)


def split_by_family(rendered: bytes) -> tuple[list[str], dict[str, bytes], dict[str, bytes]]:
    """Split rendered output into (family order, header lines by family, sample lines by family)."""
    order: list[str] = []
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    current = ""
    for line in rendered.decode("utf-8").splitlines(keepends=True):
        if line.startswith("# HELP "):
            current = line.split(" ", 3)[2]
            order.append(current)
            headers[current], samples[current] = [line], []
        elif line.startswith("# EOF"):
            continue
        elif line.startswith("#"):
            headers[current].append(line)
        else:
            samples[current].append(line)
    return (
        order,
        {name: "".join(lines).encode() for name, lines in headers.items()},
        {name: "".join(lines).encode() for name, lines in samples.items() if lines},
    )


@dataclass(frozen=True)
class _Format:
    order: tuple[str, ...]
    headers: dict[str, bytes]


@dataclass
class _Assembled:
    body: bytes
    gzip_prefix: bytes | None = None
    gzip_state: zlib._Compress | None = None


class RenderedJobs:
    """Per-job series rendered once per change; joined into one body per format when needed.

    Thread-safe: the poller updates from the event loop, the HTTP server reads from its threads.
    """

    FORMATS = (False, True)  # openmetrics?

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._formats: dict[bool, _Format] = {}
        for openmetrics in self.FORMATS:
            order, headers, _ = split_by_family(render(lambda: job_families([]), openmetrics))
            self._formats[openmetrics] = _Format(tuple(order), headers)
        self._fragments: dict[str, dict[bool, dict[str, bytes]]] = {}
        self._snapshots: dict[str, JobSnapshot] = {}
        self._assembled: dict[bool, _Assembled] = {}

    def update(self, job: JobSnapshot) -> None:
        """Publish a job's snapshot (renders it if it changed)."""
        if self._snapshots.get(job.job_id) == job:
            return
        fragment = {
            openmetrics: split_by_family(render(lambda: job_families([job]), openmetrics))[2]
            for openmetrics in self.FORMATS
        }
        with self._lock:
            self._snapshots[job.job_id] = job
            self._fragments[job.job_id] = fragment
            self._assembled.clear()

    def remove(self, job_id: str) -> None:
        with self._lock:
            if self._fragments.pop(job_id, None) is not None:
                del self._snapshots[job_id]
                self._assembled.clear()

    def snapshots(self) -> dict[str, JobSnapshot]:
        with self._lock:
            return dict(self._snapshots)

    def _assemble(self, openmetrics: bool) -> _Assembled:
        # Called with the lock held.
        assembled = self._assembled.get(openmetrics)
        if assembled is None:
            fmt = self._formats[openmetrics]
            fragments = [self._fragments[job_id][openmetrics] for job_id in sorted(self._fragments)]
            parts: list[bytes] = []
            for family in fmt.order:
                lines = [fragment[family] for fragment in fragments if family in fragment]
                if lines:
                    parts.append(fmt.headers[family])
                    parts.extend(lines)
            assembled = self._assembled[openmetrics] = _Assembled(b"".join(parts))
        return assembled

    def body(self, openmetrics: bool) -> bytes:
        """The rendered job series (no OpenMetrics # EOF: the self-metrics block ends the body)."""
        with self._lock:
            return self._assemble(openmetrics).body

    def gzip_body(self, openmetrics: bool, tail: bytes) -> bytes:
        """gzip(body + tail), compressing the cached body only once per change.

        The compressor's state after the cached body is kept and copied per scrape, so a scrape
        compresses only its small tail and the result is one ordinary gzip member.
        """
        with self._lock:
            assembled = self._assemble(openmetrics)
            if assembled.gzip_state is None:
                state = zlib.compressobj(6, zlib.DEFLATED, 31)
                assembled.gzip_prefix = state.compress(assembled.body) + state.flush(zlib.Z_SYNC_FLUSH)
                assembled.gzip_state = state
            prefix, state = assembled.gzip_prefix, assembled.gzip_state.copy()
        assert prefix is not None
        return prefix + state.compress(tail) + state.flush()
