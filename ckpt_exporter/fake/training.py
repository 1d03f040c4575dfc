"""The demo's simulated training: jobs that gain a checkpoint every few seconds.

The supervised jobs (ftjob-demo1, ...) with falling losses, and beside them one DPO job
(ftjob-demo-dpo) and one reinforcement job (ftjob-demo-rft): methods.py has their documents and
metrics.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ckpt_exporter.fake.methods import (
    StepMetrics,
    dpo_method,
    dpo_step,
    reinforcement_method,
    rft_step,
    top_hyperparameters,
)
from ckpt_exporter.fake.state import FakeApi


@dataclass
class _MethodJob:
    """A DPO or RFT job of the demo: how far each advance goes, and what a step reports."""

    every_steps: int
    total_steps: int
    report: Callable[[int, int, random.Random], StepMetrics]
    random: random.Random
    step: int = 0


class SimulatedTraining:
    """A few jobs that each gain a checkpoint every few seconds, with falling losses (supervised and
    DPO) or climbing rewards (reinforcement)."""

    KEEP = 6  # checkpoints the simulated API retains per job
    TOTAL_STEPS = 100_000
    DPO_JOB = "ftjob-demo-dpo"
    RFT_JOB = "ftjob-demo-rft"

    def __init__(
        self,
        api: FakeApi,
        jobs: int = 3,
        every_seconds: float = 5.0,
        seed: int = 7,
        other_methods: bool = True,
    ) -> None:
        """`jobs` supervised jobs, and with `other_methods` one DPO and one RFT job besides."""
        self.api = api
        self.every_seconds = every_seconds
        self._random = random.Random(seed)
        self._steps: dict[str, int] = {}
        self._methods: dict[str, _MethodJob] = {}
        for n in range(jobs):
            job_id = f"ftjob-demo{n + 1}"
            # Alternate the list order, as OpenAI (newest first) and Azure (oldest first) do.
            api.add_job(job_id, newest_first=n % 2 == 0)
            self._steps[job_id] = 0
            for _ in range(2):
                self.advance(job_id)
        # Random generators of their own, so that the supervised jobs' numbers stay what they were.
        if other_methods:
            dpo, rft = self.DPO_JOB, self.RFT_JOB
            self._add_method_job(dpo, dpo_method(), "gpt-4.1-mini-2025-04-14", newest_first=False)
            self._methods[dpo] = _MethodJob(20, 10_000, dpo_step, random.Random(seed + 1))
            self._add_method_job(rft, reinforcement_method(), "o4-mini-2025-04-16", newest_first=True)
            self._methods[rft] = _MethodJob(2, 1_000, rft_step, random.Random(seed + 2))
            for job_id in self._methods:
                for _ in range(2):
                    self.advance(job_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-training", daemon=True)

    def _add_method_job(self, job_id: str, method: dict[str, object], model: str, newest_first: bool) -> None:
        hyperparameters = top_hyperparameters(method)
        self.api.add_job(
            job_id, newest_first=newest_first, model=model, method=method, hyperparameters=hyperparameters
        )

    @property
    def job_ids(self) -> list[str]:
        return [*self._steps, *self._methods]

    def advance(self, job_id: str) -> None:
        if job_id in self._methods:
            self._advance_method_job(job_id, self._methods[job_id])
        else:
            self._advance_supervised(job_id)
        # Like the real API, keep only the most recent checkpoints; older ones drop out.
        self.api.keep_latest_checkpoints(job_id, self.KEEP)

    def _advance_supervised(self, job_id: str) -> None:
        step = self._steps[job_id] = self._steps[job_id] + 50
        progress = step / 1000
        noise = self._random.uniform(-0.03, 0.03)
        train_loss = round(2.2 * (0.9 ** (progress * 10)) + 0.2 + noise, 4)
        valid_loss = round(train_loss * 1.08 + self._random.uniform(0, 0.05), 4)
        self.api.add_checkpoint(
            job_id,
            step,
            {
                "train_loss": train_loss,
                "train_mean_token_accuracy": round(min(0.99, 0.55 + progress * 0.4), 4),
                "valid_loss": valid_loss,
                "valid_mean_token_accuracy": round(min(0.98, 0.52 + progress * 0.38), 4),
                "full_valid_loss": round(valid_loss * 0.98, 4),
                "full_valid_mean_token_accuracy": round(min(0.98, 0.53 + progress * 0.38), 4),
            },
            created_at=int(time.time()),
        )
        self.api.add_event(
            job_id,
            f"Step {step}/{self.TOTAL_STEPS}: training loss={train_loss}",
            data={
                "step": step,
                "total_steps": self.TOTAL_STEPS,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "train_mean_token_accuracy": round(min(0.99, 0.55 + progress * 0.4), 4),
            },
        )

    def _advance_method_job(self, job_id: str, job: _MethodJob) -> None:
        if job.step >= job.total_steps:
            return  # the job has succeeded
        job.step = min(job.step + job.every_steps, job.total_steps)
        reported = job.report(job.step, job.total_steps, job.random)
        self.api.add_checkpoint(job_id, job.step, reported.checkpoint, created_at=int(time.time()))
        self.api.add_event(job_id, reported.message, data=reported.event)
        if job.step == job.total_steps:
            self.api.update_job(job_id, status="succeeded")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        job_ids = self.job_ids
        for job_id in itertools.cycle(job_ids):
            if self._stop.wait(self.every_seconds / len(job_ids)):
                return
            self.advance(job_id)
