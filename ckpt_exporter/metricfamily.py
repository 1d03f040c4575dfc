"""The types of the families table (families.py): a Family, and FieldFamilies (a gauge per field).

Each builds prometheus_client metric families from job snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ckpt_exporter.snapshot import JobSnapshot

FieldSample = tuple[str, list[str], float]  # (field, label values, value)

Kind = Literal["gauge", "counter", "info"]
Group = Literal["stable", "volatile", "poll_state"]
Sample = tuple[list[str], float | dict[str, str]]  # (label values, value or info labels)


@dataclass(frozen=True)
class Family:
    """One metric family: `samples(job)` yields the job's samples of it."""

    name: str  # as exposed, without a counter's _total or an info's _info
    kind: Kind
    labels: tuple[str, ...]
    help: str
    group: Group
    samples: Callable[[JobSnapshot], Iterable[Sample]]
    info_labels: tuple[str, ...] = ()  # an info family's own labels, besides `labels`

    @property
    def exposed_name(self) -> str:
        """The name docs/metrics.md lists: a counter's with _total, an info's with _info."""
        return self.name + {"gauge": "", "counter": "_total", "info": "_info"}[self.kind]

    @property
    def exposed_type(self) -> str:
        """The type the text format gives it (an info family is a gauge of value 1 there)."""
        return "gauge" if self.kind == "info" else self.kind

    @property
    def exposed_labels(self) -> tuple[str, ...]:
        return (*self.labels, *self.info_labels)

    def build_all(self, jobs: Iterable[JobSnapshot]) -> list[Metric]:
        return [self.build(jobs)]

    def build(self, jobs: Iterable[JobSnapshot]) -> Metric:
        if self.kind == "info":
            info = InfoMetricFamily(self.name, self.help, labels=self.labels)
            for job in jobs:
                for labels, value in self.samples(job):
                    assert isinstance(value, dict) and tuple(value) == self.info_labels
                    info.add_metric(labels, value)
            return info
        family = (GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily)(
            self.name, self.help, labels=self.labels
        )
        for job in jobs:
            for labels, value in self.samples(job):
                assert not isinstance(value, dict)
                family.add_metric(labels, value)
        return family


@dataclass(frozen=True)
class FieldFamilies:
    """A gauge per field: `samples(job)` yields (field, label values, value); the family of a
    field is named prefix + field."""

    prefix: str
    labels: tuple[str, ...]
    help: str  # with {field}
    group: Group
    samples: Callable[[JobSnapshot], Iterable[FieldSample]]

    @property
    def exposed_name(self) -> str:
        """How docs/metrics.md names them."""
        return self.prefix + "<field>"

    def build_all(self, jobs: Iterable[JobSnapshot]) -> list[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for job in jobs:
            for field, labels, value in self.samples(job):
                family = families.get(field)
                if family is None:
                    family = families[field] = GaugeMetricFamily(
                        self.prefix + field, self.help.format(field=field), labels=self.labels
                    )
                family.add_metric(labels, value)
        return [families[field] for field in sorted(families)]
