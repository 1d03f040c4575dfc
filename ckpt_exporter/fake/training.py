"""The demo's simulated training: jobs that gain a checkpoint every few seconds."""

from __future__ import annotations

import itertools
import random
import threading
import time

from ckpt_exporter.fake.state import FakeApi


class SimulatedTraining:
    """A few jobs that each gain a checkpoint every few seconds, with falling losses."""

    KEEP = 6  # checkpoints the simulated API retains per job
    TOTAL_STEPS = 100_000

    def __init__(self, api: FakeApi, jobs: int = 3, every_seconds: float = 5.0, seed: int = 7) -> None:
        self.api = api
        self.every_seconds = every_seconds
        self._random = random.Random(seed)
        self._steps: dict[str, int] = {}
        for n in range(jobs):
            job_id = f"ftjob-demo{n + 1}"
            # Alternate the list order, as OpenAI (newest first) and Azure (oldest first) do.
            api.add_job(job_id, newest_first=n % 2 == 0)
            self._steps[job_id] = 0
            for _ in range(2):
                self.advance(job_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-training", daemon=True)

    @property
    def job_ids(self) -> list[str]:
        return list(self._steps)

    def advance(self, job_id: str) -> None:
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
        # Like the real API, keep only the most recent checkpoints; older ones drop out.
        self.api.keep_latest_checkpoints(job_id, self.KEEP)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        job_ids = list(self._steps)
        for job_id in itertools.cycle(job_ids):
            if self._stop.wait(self.every_seconds / len(job_ids)):
                return
            self.advance(job_id)
