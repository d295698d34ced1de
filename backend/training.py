"""Background training for the demo: models without a checkpoint are trained while the page is up.

The server hands this queue a model's `crs train` arguments when the model cannot load for want
of a checkpoint. Jobs run one at a time, each in a child process at the lowest CPU priority with
one thread, so that the live chat stays responsive; the child dies with the server (and resumes
its run next time, where the trainer supports it). Progress comes from the child's
``CRS_PROGRESS_FILE`` (`backend.progress`), its output goes to a log under ``CRS_HOME/logs``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backend.progress import PROGRESS_ENV, read_progress

log = logging.getLogger(__name__)

JobState = Literal["queued", "training", "done", "failed"]
_PR_SET_PDEATHSIG = 1  # prctl option: the kernel signals the child when its parent dies


def _low_priority_child() -> None:
    """In the child before exec: lowest CPU priority, and die with the parent."""
    os.nice(19)
    # Not Linux: no prctl, but the server's stop() still terminates the child.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class TrainingJob:
    """One model to train: the served name, its `crs train` argv, and where it reports."""

    name: str
    argv: list[str]
    log_path: Path
    progress_path: Path
    state: JobState = "queued"
    error: str | None = None
    started: float | None = None

    @property
    def progress(self) -> dict[str, Any] | None:
        """The child's last ``{done, total, elapsed_s, eta_s}``, once it is training."""
        return read_progress(self.progress_path) if self.state == "training" else None

    def failure(self, code: int) -> str:
        """The last line the child wrote, to say why it failed."""
        try:
            lines = [line for line in self.log_path.read_text().splitlines() if line.strip()]
        except OSError:
            lines = []
        last = lines[-1].strip() if lines else f"exit code {code}"
        return f"training failed: {last[:300]} (log: {self.log_path})"


@dataclass
class BackgroundTrainer:
    """A queue of training jobs run one after another by one thread."""

    home: Path
    on_done: Callable[[TrainingJob], None]
    jobs: dict[str, TrainingJob] = field(default_factory=dict)
    _queue: list[TrainingJob] = field(default_factory=list)
    _wake: threading.Condition = field(default_factory=threading.Condition)
    _child: subprocess.Popen | None = None
    _stopped: bool = False
    _thread: threading.Thread | None = None

    def submit(self, name: str, model: str, args: list[str]) -> TrainingJob:
        """Queue `crs train MODEL ARGS` for served model ``name``; starts the worker if idle."""
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        job = TrainingJob(
            name=name,
            argv=[sys.executable, "-m", "backend.cli", "train", model, *args],
            log_path=logs / f"train-{name}.log",
            progress_path=logs / f"train-{name}.progress.json",
        )
        job.progress_path.unlink(missing_ok=True)
        with self._wake:
            self.jobs[name] = job
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="crs-trainer", daemon=True)
                self._thread.start()
            self._wake.notify()
        log.info("queued training of %s: %s", name, " ".join(job.argv[2:]))
        return job

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                job = self._queue.pop(0)
            self._run(job)

    def _run(self, job: TrainingJob) -> None:
        env = {
            **os.environ,
            PROGRESS_ENV: str(job.progress_path),
            # One thread: the demo's models keep the other core for the people chatting.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        with self._wake:
            if self._stopped:
                return
            job.state, job.started = "training", time.time()
            with job.log_path.open("w") as out:
                self._child = subprocess.Popen(
                    job.argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    preexec_fn=_low_priority_child,
                )
            child = self._child
        code = child.wait()
        with self._wake:
            self._child = None
            if self._stopped:
                return
        if code == 0:
            job.state = "done"
            log.info("trained %s in %.0f s", job.name, time.time() - (job.started or 0))
            self.on_done(job)
        else:
            job.state, job.error = "failed", job.failure(code)
            log.error("%s (%s)", job.error, " ".join(job.argv[2:]))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the running job (it resumes next time where its trainer can) and the worker."""
        with self._wake:
            self._stopped = True
            child = self._child
            self._wake.notify_all()
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
