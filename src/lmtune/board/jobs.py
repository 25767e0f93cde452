"""The board's training queue: each job is `python -m lmtune train CONFIG`, a subprocess of the
real CLI, started from an argument list (never a shell), one at a time by default.

Cancel sends SIGINT, which the CLI takes as Ctrl-C: the run's state becomes `interrupted` and
the same command resumes it from its last checkpoint (Resume submits exactly that). Each job's
output goes to a log file under the runs root's `.board/jobs/<id>/`, which the page tails.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lmtune.io import write_text

_LOG_CHUNK = 64 * 1024  # most bytes of log one request returns
_CANCEL_GRACE_S = 30.0  # after SIGINT, how long a job may take to stop before it is killed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    command: list[str]
    run_dir: Path
    log_path: Path
    status: str = "queued"  # queued, running, finished, failed, cancelled
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    returncode: int | None = None
    process: subprocess.Popen | None = None
    cancel_requested: float | None = None

    def public(self, run_path: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "run_path": run_path,
            "command": self.command,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "returncode": self.returncode,
        }


class JobQueue:
    """Queued trainings under `state_dir`; a background thread starts and reaps them."""

    def __init__(self, state_dir: Path, max_running: int = 1, poll_s: float = 0.3) -> None:
        self.state_dir = state_dir
        self.max_running = max_running
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(poll_s,), name="lmtune-board-jobs", daemon=True
        )
        self._thread.start()

    # ---- submitting ------------------------------------------------------------------------------
    def submit(self, config: dict[str, Any], run_dir: Path) -> Job:
        """Queue a training of `config` (a config dict whose output_dir is `run_dir`)."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}"
        folder = self.state_dir / "jobs" / job_id
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.yaml"
        write_text(config_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        command = [sys.executable, "-m", "lmtune", "train", str(config_path)]
        job = Job(job_id, command, run_dir, folder / "log.txt")
        with self._lock:
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created + j.id, reverse=True)

    def active_for(self, run_dir: Path) -> Job | None:
        """The queued or running job that trains into `run_dir`, if any."""
        return next(
            (j for j in self.jobs() if j.run_dir == run_dir and j.status in ("queued", "running")), None
        )

    def cancel(self, job_id: str) -> Job | None:
        """Queued: dropped. Running: SIGINT (Ctrl-C); the run stays resumable."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                job.status, job.finished = "cancelled", _now()
            elif job.status == "running" and job.process is not None and job.cancel_requested is None:
                job.cancel_requested = time.monotonic()
                job.process.send_signal(signal.SIGINT)
        return job

    def log(self, job_id: str, offset: int) -> tuple[str, int] | None:
        job = self.get(job_id)
        if job is None:
            return None
        if not job.log_path.is_file():
            return "", 0
        with open(job.log_path, "rb") as fh:
            fh.seek(max(0, offset))
            data = fh.read(_LOG_CHUNK)
        return data.decode("utf-8", "replace"), max(0, offset) + len(data)

    # ---- the background loop -----------------------------------------------------------------
    def _loop(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            self.tick()

    def tick(self) -> None:
        """Reap finished jobs, kill ones that ignored a cancel, start queued ones while there is room."""
        with self._lock:
            for job in self._jobs.values():
                if job.status == "running":
                    self._reap(job)
            running = sum(j.status == "running" for j in self._jobs.values())
            queued = sorted(
                (j for j in self._jobs.values() if j.status == "queued"), key=lambda j: j.created + j.id
            )
            for job in queued[: max(0, self.max_running - running)]:
                self._start(job)

    def _reap(self, job: Job) -> None:
        assert job.process is not None
        code = job.process.poll()
        if code is None:
            if job.cancel_requested is not None and time.monotonic() - job.cancel_requested > _CANCEL_GRACE_S:
                job.process.kill()
            return
        job.returncode, job.finished = code, _now()
        job.status = (
            "cancelled" if job.cancel_requested is not None else ("finished" if code == 0 else "failed")
        )
        job.process = None

    def _start(self, job: Job) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "2"}
        with open(job.log_path, "ab") as log:
            job.process = subprocess.Popen(  # an argument list: no shell
                job.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.state_dir),
                start_new_session=True,  # a Ctrl-C at the board's terminal is not sent to its jobs
            )
        job.status, job.started = "running", _now()

    def close(self, timeout_s: float = 20.0) -> None:
        """Stop the loop; cancel running jobs (SIGINT, then kill after `timeout_s`)."""
        self._stop.set()
        self._thread.join(timeout=5)
        for job in self.jobs():
            if job.status == "running" and job.process is not None:
                job.process.send_signal(signal.SIGINT)
                try:
                    job.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    job.process.kill()
                    job.process.wait()
                job.status, job.finished, job.returncode = "cancelled", _now(), job.process.returncode
