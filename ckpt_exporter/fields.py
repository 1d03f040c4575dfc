"""Every numeric field the API sends, not a fixed list: what becomes a metric, and what is skipped.

A checkpoint's `metrics` and a metrics event's `data` carry the supervised fields the exporter knows
by name, and whatever else the method reports (reinforcement fine-tuning's rewards, token counts,
error means...). Each top-level number becomes a gauge named after its field; reinforcement's nested
parts (`scores.graders[]`, `errors.graders[]`, `timing.step`) become labelled gauges. These shapes are
documented loosely and change, so parsing is lenient: a part of an unexpected shape gives no series,
never a rejected checkpoint or event.

A field name becomes part of a metric name, so it must be one (`[a-z][a-z0-9_]*`, at most
MAX_NAME_LENGTH characters), and a job may bring at most MAX_FIELDS_PER_JOB of them: the rest are
skipped, with a reason (`invalid_field` or `too_many_fields`) that the job's poll counts and logs
once. A name ending in a suffix Prometheus reserves for counters, histograms and summaries (RFT's
`sample_parse_error_count`, say) is exported with `_value` appended, so that it reads as the gauge
it is: `..._sample_parse_error_count_value`.

This module is at the bottom of the import order, with models.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME_LENGTH = 100
# A gauge named ..._total, ..._count, ..._sum, ..._bucket, ..._created or ..._info would read (and
# lint, with promtool check metrics) as a part of a counter, histogram, summary or info metric.
RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created", "_info")
MAX_FIELDS_PER_JOB = 64  # distinct exported field names per job, checkpoints and events together
MAX_GRADERS = 16  # graders per metrics event (their names come from the user's job definition)
MAX_GRADER_NAME_LENGTH = 100
MAX_KINDS = 32  # error kinds per grader, phases per step
SPLITS = ("train", "valid")

INVALID = "invalid_field"
TOO_MANY = "too_many_fields"

Numbers = tuple[tuple[str, float], ...]  # (field, value), in the API's order
Skipped = tuple[tuple[str, str], ...]  # (reason, what), for counting and logging


def is_number(value: object) -> bool:
    """A JSON number: booleans are not numbers (True is an int in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def name_problem(name: str) -> str | None:
    """Why a field name cannot be part of a metric name, or None."""
    if not FIELD_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        return f"{name[:MAX_NAME_LENGTH]!r} is not a metric name ([a-z][a-z0-9_]*)"
    return None


def metric_name(name: str) -> str:
    """The name a field is exported under: itself, or with `_value` after a reserved suffix.

    >>> metric_name("train_mean_reward"), metric_name("sample_parse_error_count")
    ('train_mean_reward', 'sample_parse_error_count_value')
    """
    return f"{name}_value" if name.endswith(RESERVED_SUFFIXES) else name


def top_level_numbers(raw: Mapping[str, Any], known: Iterable[str]) -> tuple[Numbers, Skipped]:
    """The numeric fields of `raw` other than `known` ones, and those that cannot be exported."""
    known = frozenset(known)
    numbers: list[tuple[str, float]] = []
    skipped: list[tuple[str, str]] = []
    for name, value in raw.items():
        if name in known or not isinstance(name, str) or not is_number(value):
            continue  # strings, booleans, objects and nulls are not metrics
        problem = name_problem(name)
        number = _finite(value)
        exported = metric_name(name)
        if problem is not None:
            skipped.append((INVALID, problem))
        elif number is None:
            skipped.append((INVALID, f"{name}: not a finite number"))
        elif exported != name and (exported in raw or exported in known):
            skipped.append((INVALID, f"{name}: exported as {exported}, which the API also sends"))
        else:
            numbers.append((exported, number))
    return tuple(numbers), tuple(skipped)


def _graders(part: object) -> list[tuple[str, Mapping[str, Any]]]:
    """The named entries of a part's `graders` list, at most MAX_GRADERS."""
    graders = part.get("graders") if isinstance(part, Mapping) else None
    if not isinstance(graders, list):
        return []
    out = []
    for grader in graders:
        name = grader.get("name") if isinstance(grader, Mapping) else None
        if isinstance(name, str) and 0 < len(name) <= MAX_GRADER_NAME_LENGTH and encodable(name):
            out.append((name, grader))
    return out


def encodable(text: str) -> bool:
    """False for a lone surrogate (JSON's "\\ud800"), which no exposition can write as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: object) -> float | None:
    """The value as a finite float, or None (an integer too large for a float is not one)."""
    if not is_number(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def grader_rewards(scores: object) -> tuple[tuple[str, str, float], ...]:
    """(grader, split, mean reward) from `scores.graders[]`: {name, train_reward_mean, valid_reward_mean}.

    The top-level spelling (train_mean_reward, valid_mean_reward) is accepted too.
    """
    out: dict[tuple[str, str], float] = {}  # a grader named twice: its first entry (one series each)
    for name, grader in _graders(scores)[:MAX_GRADERS]:
        for split in SPLITS:
            value = _finite(grader.get(f"{split}_reward_mean", grader.get(f"{split}_mean_reward")))
            if value is not None:
                out.setdefault((name, split), value)
    return tuple((name, split, value) for (name, split), value in out.items())


def grader_errors(errors: object) -> tuple[tuple[str, str, str, float], ...]:
    """(grader, split, error, rate) from the `*_mean` fields of `errors.graders[]`.

    The error is the field's stem (other_error_mean -> other_error). A stem that starts with train_
    or valid_ names its split; without one the rate is of the training samples (split train).
    """
    out: list[tuple[str, str, str, float]] = []
    seen: set[tuple[str, str, str]] = set()  # other_error_mean and train_other_error_mean: one series
    for name, grader in _graders(errors)[:MAX_GRADERS]:
        kinds = 0
        for key, raw in grader.items():
            value = _finite(raw)
            if value is None or not isinstance(key, str) or not key.endswith("_mean"):
                continue
            stem = key.removesuffix("_mean")
            prefix, _, rest = stem.partition("_")
            split, error = (prefix, rest) if prefix in SPLITS and rest else ("train", stem)
            if name_problem(error) is None and kinds < MAX_KINDS and (name, split, error) not in seen:
                kinds += 1
                seen.add((name, split, error))
                out.append((name, split, error, value))
    return tuple(out)


def step_phases(timing: object) -> Numbers:
    """(phase, seconds) from `timing.step`: {sampling, training, eval, full_iteration, ...}."""
    return named_numbers(timing.get("step") if isinstance(timing, Mapping) else None)


def too_many_graders(*parts: object) -> Skipped:
    """A `too_many_fields` entry for each part that names more than MAX_GRADERS graders."""
    return tuple(
        (TOO_MANY, f"{len(graders)} graders, more than {MAX_GRADERS}")
        for graders in map(_graders, parts)
        if len(graders) > MAX_GRADERS
    )


def numeric_hyperparameters(hyperparameters: object) -> Numbers:
    """The numeric hyperparameters; "auto" (or any other string) gives none."""
    return named_numbers(hyperparameters)


def named_numbers(mapping: object) -> Numbers:
    """The finite numbers of a mapping whose keys can be label values, at most MAX_KINDS."""
    if not isinstance(mapping, Mapping):
        return ()
    out = []
    for name, raw in mapping.items():
        value = _finite(raw)
        if value is not None and isinstance(name, str) and name_problem(name) is None:
            out.append((name, value))
    return tuple(out[:MAX_KINDS])


class FieldBudget:
    """The field names one job may export: the first MAX_FIELDS_PER_JOB it brings, kept for good.

    `reserved` are the names that would make another metric's name (of the checkpoint's or of the
    job's prefix: refused under both, so that a name admitted for one never collides in the
    other). `admit` returns what it refused; the job counts and logs each refusal once (jobstate).
    """

    def __init__(self, reserved: Iterable[str], limit: int = MAX_FIELDS_PER_JOB) -> None:
        self.reserved = frozenset(reserved)
        self.limit = limit
        self.admitted: set[str] = set()

    def admit(self, names: Iterable[str]) -> Skipped:
        refused = []
        for name in dict.fromkeys(names):
            if name in self.admitted:
                continue
            if name in self.reserved:
                refused.append((INVALID, f"{name!r} is the name of another metric"))
            elif len(self.admitted) >= self.limit:
                refused.append((TOO_MANY, f"{name!r}: the job already exports {self.limit} fields"))
            else:
                self.admitted.add(name)
        return tuple(refused)
