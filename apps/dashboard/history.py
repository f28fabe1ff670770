"""Readings of both sites once a second, kept for a few minutes, for the trend and the recent window.

The recorder starts with the first look at /pool/ (nothing runs while no one
watches) and goes on for the life of the worker, so the trend is already there
when the page is opened again, and every worker that answers has the same.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from django.conf import settings

from apps.dashboard import snapshot
from apps.dashboard.snapshot import Snapshot
from apps.metrics.receivers import record_pool_usage

INTERVAL_SECONDS = 1.0
KEEP_SECONDS = 180


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    here: Snapshot
    peer: Snapshot | None  # None: no peer configured, or it did not answer


def peer_url() -> str:
    return settings.DASHBOARD_PEER_URL


def read_peer() -> tuple[Snapshot | None, str | None]:
    """The peer's snapshot, or why there is none (an error to show on the page)."""
    url = peer_url()
    if not url:
        return None, None
    try:
        return snapshot.fetch(url), None
    except (OSError, ValueError) as exc:  # refused, timed out, not Prometheus text
        return None, f"{url}/metrics: {exc}"


def read_now() -> tuple[Reading, str | None]:
    """Both sites now, and why the peer could not be read (None when it could, or there is none)."""
    record_pool_usage()  # this worker's gauges as of now, as /metrics does
    here = snapshot.take()
    peer, error = read_peer()
    return Reading(at=here.taken_at, here=here, peer=peer), error


class Recorder(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="pool-dashboard-recorder", daemon=True)
        self.readings: deque[Reading] = deque(maxlen=int(KEEP_SECONDS / INTERVAL_SECONDS))
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                reading, _ = read_now()
            except Exception:  # a half-written metrics file, a worker going away: next time
                reading = None
            if reading is not None:
                with self.lock:
                    self.readings.append(reading)
            time.sleep(max(0.0, INTERVAL_SECONDS - (time.monotonic() - started)))

    def history(self) -> list[Reading]:
        with self.lock:
            return list(self.readings)


_recorder: Recorder | None = None
_start_lock = threading.Lock()


def recorder() -> Recorder:
    """This worker's recorder, started on first use."""
    global _recorder
    with _start_lock:
        if _recorder is None or not _recorder.is_alive():
            _recorder = Recorder()
            _recorder.start()
        return _recorder


def reading_before(history: list[Reading], now: float, seconds: float) -> Reading | None:
    """The latest reading at least `seconds` old; None while the recorder has not run that long."""
    earlier = [r for r in history if now - r.at >= seconds]
    return earlier[-1] if earlier else None
