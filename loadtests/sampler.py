"""Watch a site under load: the most connections out at once, and a progress line every few seconds."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Protocol

from loadtests import measure
from loadtests.site import cpu_used


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


class Server(Protocol):
    url: str

    def worker_cpu_seconds(self) -> float | None: ...


class Sampler(threading.Thread):
    """Reads /metrics every half second: the most connections out at once, and progress.

    Every five seconds it prints what the last five seconds looked like (requests
    a second, the hold per checkout and the wait for the pool) and notes how busy
    the workers were, in percent of one core each (the mean over the workers):
    Python runs one thread of a process at a time, so a worker near 100% is
    bound by its CPU, whatever its threads and its pool allow. Sites this run
    did not start give no CPU readings.
    """

    EVERY = 5.0

    def __init__(self, server: Server, label: str, duration: int, connections: int, workers: int) -> None:
        super().__init__(daemon=True)
        self.server, self.label, self.duration = server, label, duration
        self.connections, self.workers = connections, workers
        self.max_checked_out = 0.0
        self.busy_percents: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        last = None  # (clock, scrape, worker CPU) at the last progress line
        while not self.stopping.wait(0.5):
            try:
                scrape = measure.fetch(self.server.url, timeout=5)
            except OSError:
                continue
            now = time.monotonic()
            checked_out = scrape.total("db_connections_checked_out")
            self.max_checked_out = max(self.max_checked_out, checked_out)
            if last is None:
                last = (now, scrape, self.server.worker_cpu_seconds())
                continue
            then, scrape_then, cpu_then = last
            if now - then < self.EVERY:
                continue
            cpu = self.server.worker_cpu_seconds()  # only when a reading is due
            busy = self.busy_percent(cpu_used(cpu_then, cpu), now - then)
            if busy is not None:
                self.busy_percents.append(busy)
            window = measure.Window(scrape_then, scrape)
            say(
                f"  {self.label}: {min(self.duration, int(now - started))}/{self.duration} s, "
                f"{window.delta('db_request_checkouts_count') / (now - then):.0f} req/s, "
                f"hold {milliseconds(window.mean('db_connection_hold_seconds'))} per checkout, "
                f"wait {milliseconds(window.mean('db_connection_wait_seconds'))}, "
                f"{checked_out:.0f}/{self.connections} connections out"
                + (f", worker CPU {busy:.0f}%" if busy is not None else "")
            )
            last = (now, scrape, cpu)

    def busy_percent(self, cpu_seconds: float | None, seconds: float) -> float | None:
        """Percent of one core per worker that `cpu_seconds` of CPU in `seconds` of time make."""
        return None if cpu_seconds is None else 100 * cpu_seconds / (seconds * self.workers)

    def median_busy_percent(self) -> float | None:
        return statistics.median(self.busy_percents) if self.busy_percents else None


def milliseconds(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"
