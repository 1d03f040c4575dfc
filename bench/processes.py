"""Supervision of the processes a run starts: each logs to a file of its own, dies with the runner,
and is stopped by its pid, never by name; CPU and RSS are read from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """Children get SIGTERM if the runner dies (Linux), so none outlives an interrupted run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process whose output goes to a log file; stopped by its pid, never by name."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self._log_file = self.log.open("w")
        self.popen = subprocess.Popen(
            argv,
            cwd=workdir,  # never the repository: `python -m` would import its ckpt_exporter first
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with prefix (the child announces its port that way)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line.startswith(prefix):
                return line.strip()
            if not line and self.popen.poll() is not None:
                break
        raise RuntimeError(f"{self.name} did not print {prefix!r}; see {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()


class Children:
    """Every process the run starts; all are stopped on exit, whatever happens."""

    def __init__(self, workdir: Path, source: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
        self.env["PYTHONPATH"] = str(source)
        self.env["PYTHONUNBUFFERED"] = "1"
        self._all: list[Process] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, [sys.executable, *argv], self.workdir, {**self.env, **(env or {})})
        self._all.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self._all:
            self._all.remove(process)

    def running(self) -> list[Process]:
        """The processes started and not yet stopped, oldest first."""
        return list(self._all)

    def stop_all(self) -> None:
        for process in reversed(self._all):
            with contextlib.suppress(Exception):
                process.stop()
        self._all.clear()
