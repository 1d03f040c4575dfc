"""Where each metric family goes in the exposition, and its HELP and TYPE lines in each format.

The families table (families.py) fixes the order; a FieldFamilies entry adds a family per numeric
field the API sends, which is only known when a job brings it. The layout learns those as they
come: each family ranks by its table entry, then by name, so the stable, volatile and poll-state
runs stay contiguous whatever fields appear.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest as render_text
from prometheus_client.openmetrics.exposition import generate_latest as render_openmetrics
from prometheus_client.registry import Collector

from ckpt_exporter.families import FAMILIES
from ckpt_exporter.metricfamily import Group
from ckpt_exporter.snapshot import JobSnapshot

Built = list[tuple[int, Metric]]  # (index of the table entry, a family it built)


class FamiliesCollector(Collector):
    """Adapts a function returning families to prometheus_client's Collector interface."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        yield from self._families()


def render(families: Callable[[], Iterable[Metric]], openmetrics: bool) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families))
    return render_registry(registry, openmetrics)


def render_registry(registry: CollectorRegistry, openmetrics: bool) -> bytes:
    """The registry in the text format, or in OpenMetrics."""
    if openmetrics:
        return render_openmetrics(registry)  # type: ignore[no-untyped-call,no-any-return]
    return render_text(registry)


def split_by_family(rendered: bytes) -> tuple[list[str], dict[str, bytes], dict[str, bytes]]:
    """Split rendered output into (family order, header lines by family, sample lines by family).

    Lines end at \n alone, as in the text format: prometheus_client escapes \n in label values but
    leaves the other characters that str.splitlines would break at (\r, \x0b, \x1c, \x85, \u2028
    ...), and a label value from the API may hold any of them.
    """
    order: list[str] = []
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    current = ""
    for text in rendered.decode("utf-8").split("\n"):
        if not text:
            continue
        line = text + "\n"
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


def build(jobs: Iterable[JobSnapshot], groups: tuple[Group, ...] | None = None) -> Built:
    """Every family of the table (or of the given groups) for the jobs, with its entry's index."""
    jobs = list(jobs)
    return [
        (index, metric)
        for index, family in enumerate(FAMILIES)
        if groups is None or family.group in groups
        for metric in family.build_all(jobs)
    ]


class FamilyLayout:
    """The families met so far: their order, their group, their headers. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rank: dict[str, tuple[int, str]] = {}  # text-format name -> (table index, name)
        self._group: dict[str, Group] = {}
        self._headers: dict[bool, dict[str, bytes]] = {False: {}, True: {}}
        self._order: tuple[str, ...] = ()
        self._stable = 0  # how many of _order are stable
        self._known_as: dict[str, str] = {}  # a family's name -> its text-format name
        self.learn(build([]))

    def learn(self, built: Built) -> list[str]:
        """The text-format names of the built families, learning those not met before."""
        names = []
        for index, metric in built:
            name = self._known_as.get(metric.name)
            if name is None:
                name = self._learn(index, metric)
            names.append(name)
        return names

    def _learn(self, index: int, metric: Metric) -> str:
        empty = Metric(metric.name, metric.documentation, metric.type)
        order, text_headers, _ = split_by_family(render(lambda: [empty], False))
        _, om_headers, _ = split_by_family(render(lambda: [empty], True))
        [name] = order
        with self._lock:
            if name not in self._rank:
                self._rank[name] = (index, metric.name)
                self._group[name] = FAMILIES[index].group
                self._headers[False][name] = text_headers[name]
                self._headers[True][name] = next(iter(om_headers.values()))
                self._order = tuple(sorted(self._rank, key=self._rank.__getitem__))
                self._stable = sum(1 for n in self._order if self._group[n] == "stable")
            self._known_as = {**self._known_as, metric.name: name}  # replaced whole, never half-updated
        return name

    def group(self, name: str) -> Group:
        return self._group[name]

    def order(self) -> tuple[tuple[str, ...], int]:
        """Every family name in exposition order, and how many of them (the first) are stable."""
        with self._lock:
            return self._order, self._stable

    def header(self, name: str, openmetrics: bool) -> bytes:
        return self._headers[openmetrics][name]
