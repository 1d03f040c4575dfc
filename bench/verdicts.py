"""Verdicts on a run's results: the quick run's machine-independent checks (CI fails on them) and
the full run's targets, on the machine it ran on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdicts:
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, holds: bool, detail: str) -> None:
        self.items.append({"name": name, "holds": holds, "detail": detail})

    @property
    def all_hold(self) -> bool:
        return all(item["holds"] for item in self.items)


def quick_checks(results: dict[str, Any]) -> Verdicts:
    """Machine-independent ratios with wide margins (CI)."""
    checks = Verdicts()
    if "scale" in results:
        larger = results["scale"][-1]
        ratio = larger["naive_gzip"]["median"] / larger["ours_gzip"]["median"]
        checks.add(
            f"scrape at {larger['jobs']} jobs >= 3x faster than naive (gzip, medians)",
            ratio >= 3,
            f"x{ratio:.1f}",
        )
        series_ratio = larger["naive_samples"] / larger["samples"]
        checks.add(
            "the naive exporter serves the same series", 0.98 <= series_ratio <= 1.02, f"{series_ratio:.3f}"
        )
    for poll in results.get("poll", []):
        transport = poll["transport"]
        checks.add(
            f"{transport}: finished jobs cost 0 checkpoint requests after their final read",
            poll["finished_checkpoint_requests"] == 0,
            str(poll["finished_checkpoint_requests"]),
        )
        low, high = poll["running_checkpoint_requests_min_max"]
        checks.add(
            f"{transport}: each running job costs exactly 1 checkpoints request per cycle",
            low == high == poll["cycles_measured"],
            f"{low}..{high} over {poll['cycles_measured']} cycles",
        )
        by_endpoint = poll["requests_per_cycle_by_endpoint"]
        checks.add(
            f"{transport}: requests/cycle = running jobs x (checkpoints, events) + listing pages, exactly",
            by_endpoint.get("checkpoints", 0) == poll["running"]
            and by_endpoint.get("events", 0) in (0, poll["running"])
            and by_endpoint.get("jobs", 0) == poll["status_pages_needed"]
            and by_endpoint.get("job", 0) == 0
            and poll["requests_per_cycle"] == poll["needed_requests_per_cycle"],
            json.dumps({k: round(v, 2) for k, v in by_endpoint.items()}),
        )
    if results.get("poll"):
        default = results["poll"][0]
        checks.add(
            f"{default['transport']}: poll-cycle time <= 2x the floor",
            default["ratio_to_floor"] <= 2.0,
            f"x{default['ratio_to_floor']:.2f}",
        )
    if "naive_poll" in results:
        naive = results["naive_poll"]
        lists = len(naive["lists"].split(","))
        checks.add(
            "the naive poller reads every list of every job every cycle",
            naive["requests_per_cycle"] == naive["jobs"] * lists,
            f"{naive['requests_per_cycle']:.0f}",
        )
    return checks


def targets(results: dict[str, Any]) -> Verdicts:
    """The issue's targets, on this machine (the full run)."""
    out = Verdicts()
    by_size = {s["jobs"]: s for s in results.get("scale", [])}
    if 1000 in by_size:
        s = by_size[1000]
        for key, label in (("ours_gzip", "cache valid"), ("ours_gzip_after_change", "after a change")):
            ratio = s["naive_gzip"]["median"] / s[key]["median"]
            out.add(
                f"scrape >= 20x faster than naive at 1,000 jobs (gzip, {label})", ratio >= 20, f"x{ratio:.0f}"
            )
    if 10000 in by_size:
        s = by_size[10000]
        for key, label in (("ours_gzip", "cache valid"), ("ours_gzip_after_change", "after a change")):
            p99 = s[key]["p99"]
            out.add(
                f"scrape < 50 ms at 10,000 jobs (gzip, {label}; p99)",
                p99 < 50,
                f"median {s[key]['median']:.1f} ms, p99 {p99:.1f} ms",
            )
    for poll in results.get("poll", []):
        out.add(
            f"poll-cycle time within 1.3x the floor ({poll['transport']})",
            poll["ratio_to_floor"] <= 1.3,
            f"{poll['cycle_seconds']:.2f}s / {poll['floor_seconds']:.2f}s = x{poll['ratio_to_floor']:.2f}",
        )
    for size, limit in ((1000, 80), (10000, 250)):
        if size in by_size:
            rss = max(by_size[size]["rss_mb"], by_size[size]["rss_mb_after_scrapes"])
            out.add(f"RSS < {limit} MB at {size:,} jobs", rss < limit, f"{rss:.0f} MB")
    if results.get("poll"):
        finished = [p["finished_checkpoint_requests"] for p in results["poll"]]
        out.add(
            "finished jobs cost 0 requests per cycle after their final read",
            all(f == 0 for f in finished),
            f"{max(finished)} checkpoint requests for {results['poll'][0]['finished']:,} finished jobs",
        )
    return out
