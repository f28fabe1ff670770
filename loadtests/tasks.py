"""The tasks scenario: a real Celery worker (threads pool) confirming orders; the worker of `make worker`.

    python -m loadtests.compare --scenarios tasks     the A/B: stock and release, the same pool
    python -m loadtests.tasks worker                  a worker on the embedded PostgreSQL (make worker)
    python -m loadtests.tasks queue 100               100 confirmations for a running worker

A task worker is a server whose requests are tasks. For one side, measure_side()
starts `celery -A project worker --pool threads` with the side's engine and pool
(as loadtests.site.Site does for gunicorn), with a broker folder and a metrics
folder of its own; waits until it takes tasks; times a few tasks alone; queues N
apps.orders.tasks.confirm_order tasks (read the order, call the carrier, write a
confirmation) for the shop's seeded orders at once; waits until the worker has
finished them all; reads the worker's metrics from its folder; stops it; and
deletes the confirmations it made. Tasks per second is the side's `rps`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from loadtests import measure
from loadtests.sampler import milliseconds, say
from loadtests.side import connection_figures, ms, ratio
from loadtests.site import BASE_DIR, LogFile, StartError, cpu_used

TASK = "apps.orders.tasks.confirm_order"
FILESYSTEM_BROKER = "filesystem://localhost/"  # kombu's filesystem transport; the host means nothing
UNLOADED_TASKS = 5  # timed one at a time before the load
PROGRESS_EVERY = 5.0  # seconds between progress lines


class Worker(LogFile):
    """`celery -A project worker` with the threads pool, in a session of its own, for a `with` block.

    `env` is added to this process's environment (DB_RELEASE, pool sizes, ...);
    the broker, the metrics folder and the readiness file are set here. The
    broker is `broker_url`, else CELERY_BROKER_URL when that is set (Redis, say),
    else a folder of this worker's own under `workdir`.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        concurrency: int,
        name: str = "worker",
        broker_url: str | None = None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.broker_url = broker_url or os.environ.get("CELERY_BROKER_URL") or FILESYSTEM_BROKER
        self.broker_folder = workdir / f"broker-{name}"
        self.metrics_dir = workdir / f"metrics-{name}"
        self.ready_file = workdir / f"worker-{name}.ready"
        self.log_path = workdir / f"celery-{name}.log"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_LOG_LEVEL": "WARNING",
            **env,
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_BROKER_FOLDER": str(self.broker_folder),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "WORKER_READY_FILE": str(self.ready_file),
        }
        self.process: subprocess.Popen | None = None
        self._app = None

    # The process

    def start(self) -> None:
        for folder in (self.broker_folder, self.metrics_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.ready_file.unlink(missing_ok=True)
        self.purge()  # a shared broker may hold an earlier run's tasks
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=BASE_DIR, env=self.env, stdout=log, stderr=log, start_new_session=True
            )

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "--pool", "threads", "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h", "--loglevel", "WARNING",
            # Nothing here talks to other workers: no start-up handshake, no heartbeats.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip

    def wait_until_ready(self, timeout: float = 60) -> None:
        """Until the worker takes tasks (it writes its ready file); StartError with its log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(f"the Celery worker exited at start; its log:\n{self.log_tail()}")
            if self.ready_file.exists():
                return
            time.sleep(0.1)
        self.stop()
        raise StartError(f"the Celery worker was not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> int | None:
        """A warm shutdown (SIGTERM: running tasks finish); its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self._app is not None:
            self._app.close()
            self._app = None
        return self.process.returncode

    def __enter__(self) -> Worker:
        self.start()
        self.wait_until_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def worker_cpu_seconds(self) -> float | None:
        """CPU time (user and system) the worker has used so far; None if unreadable."""
        if self.process is None:
            return None
        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:  # gone
            return None
        return times.user + times.system

    def scrape(self) -> measure.Scrape:
        """The worker's metrics as its PROMETHEUS_MULTIPROC_DIR holds them now."""
        return measure.read_directory(self.metrics_dir)

    # The broker

    @property
    def app(self):
        """A Celery app that sends to this worker's broker (not the project's: its settings are ours)."""
        if self._app is None:
            from celery import Celery

            from project.settings import broker_settings

            app = Celery("loadtests", set_as_current=False, fixups=[])
            app.conf.update(
                broker_url=self.broker_url,
                broker_connection_retry_on_startup=True,
                **broker_settings(self.broker_url, self.broker_folder),
            )
            self._app = app
        return self._app

    @contextmanager
    def producer(self) -> Iterator:
        with self.app.producer_or_acquire() as producer:
            yield producer

    def send(self, name: str, args: list, task_id: str, producer=None) -> None:
        self.app.send_task(name, args=args, task_id=task_id, producer=producer)

    def purge(self) -> None:
        if not self.broker_url.startswith("filesystem://"):
            with self.app.connection_for_write() as connection:
                connection.default_channel.queue_purge("celery")


# One side of the A/B


class Progress(threading.Thread):
    """Reads the worker's metrics every half second: tasks finished, the most connections out at once.

    Every five seconds it prints what the last five seconds looked like.
    """

    def __init__(self, worker: Worker, label: str, tasks: int, pool_size: int) -> None:
        super().__init__(daemon=True)
        self.worker, self.label, self.tasks, self.pool_size = worker, label, tasks, pool_size
        self.base = worker.scrape()
        self.finished = 0
        self.max_checked_out = 0.0
        self.changed = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        last = (started, self.base, self.worker.worker_cpu_seconds())
        while not self.stopping.wait(0.5):
            try:
                scrape = self.worker.scrape()
            except (OSError, ValueError):  # a values file being written
                continue
            now = time.monotonic()
            self.finished = int(measure.Window(self.base, scrape).delta("celery_tasks_total"))
            self.max_checked_out = max(self.max_checked_out, scrape.total("db_connections_checked_out"))
            self.changed.set()
            then, scrape_then, cpu_then = last
            if now - then < PROGRESS_EVERY:
                continue
            cpu = self.worker.worker_cpu_seconds()
            used = cpu_used(cpu_then, cpu)
            busy = None if used is None else 100 * used / (now - then)
            window = measure.Window(scrape_then, scrape)
            say(
                f"  {self.label}: {now - started:.0f} s, {self.finished}/{self.tasks} tasks, "
                f"{window.delta('celery_tasks_total') / (now - then):.0f} tasks/s, "
                f"hold {milliseconds(window.mean('db_connection_hold_seconds'))} per checkout, "
                f"wait {milliseconds(window.mean('db_connection_wait_seconds'))}, "
                f"{scrape.total('db_connections_checked_out'):.0f}/{self.pool_size} connections out"
                + (f", worker CPU {busy:.0f}%" if busy is not None else "")
            )
            last = (now, scrape, cpu)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Until `count` tasks have finished (True), or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self.finished < count:
            if time.monotonic() > deadline or not self.is_alive():
                return False
            self.changed.wait(1.0)
            self.changed.clear()
        return True


def worker_env(side, args) -> dict[str, str]:
    """The side's engine, pool and carrier latency, as loadtests.site.Site sets them for gunicorn."""
    return {
        "DB_RELEASE": side.release,
        "DB_POOL": args.pool,
        "DB_POOL_MIN_SIZE": str(side.pool_size),
        "DB_POOL_MAX_SIZE": str(side.pool_size),
        "TASK_EXTERNAL_LATENCY_MS": str(args.task_latency_ms),
        "CELERY_WORKER_CONCURRENCY": str(args.threads),
    }


def order_ids() -> list[int]:
    """The seeded orders, which the tasks confirm in turn."""
    from django.db import connections

    from apps.orders.models import Order

    ids = list(Order.objects.filter(number__startswith="S-").order_by("pk").values_list("pk", flat=True))
    connections.close_all()
    if not ids:
        raise StartError("the shop has no seeded orders to confirm: seed it (--seed small)")
    return ids


def timeout_for(tasks: int, latency_ms: int, connections: int) -> float:
    """Long enough for stock Django with its pool (one task per connection at a time), twice over."""
    return 60 + 2 * tasks * (latency_ms / 1000 + 0.01) / max(connections, 1)


# Seconds a side takes besides its tasks: the worker's start and warm stop, the tasks timed alone.
SIDE_OVERHEAD_SECONDS = 8
CPU_SECONDS_PER_TASK = 0.004  # the worker's, for the release engine on a 2-core VM


def expected_seconds(side, args) -> float:
    """About how long measure_side() takes for `side`: what bounds the tasks, plus the overhead.

    Stock Django runs as many tasks at a time as it has connections, each for the
    whole call; release as many as the worker has threads, or as its CPU allows.
    """
    call = args.task_latency_ms / 1000 + 0.01
    at_once = min(side.pool_size, args.threads) if side.release == "request" else args.threads
    seconds = max(args.tasks * call / at_once, args.tasks * CPU_SECONDS_PER_TASK)
    return SIDE_OVERHEAD_SECONDS + UNLOADED_TASKS * call + seconds


def measure_side(side, args, label: str, files: str, env: dict[str, str] | None = None) -> dict:
    """Run N confirm_order tasks through a worker for `side` (a loadtests.side.Side) and return its figures.

    `args` is compare's namespace: pool, threads (the worker's concurrency), out,
    tasks (N) and task_latency_ms. `env` is added to the worker's environment (a
    DATABASE_URL through PgBouncer, say). The keys are those of
    loadtests.side.measure_side, None where a figure has no meaning for a worker,
    plus "server": "worker", "tasks" and "task_latency_ms".
    """
    orders = order_ids()
    prefix = f"{files}-{uuid.uuid4().hex[:8]}-"
    say(f"{label}: starting a Celery worker ({args.threads} threads, pool {side.pool_size})")
    worker = Worker(args.out, {**worker_env(side, args), **(env or {})}, args.threads, name=files)
    with worker:
        unloaded = run_alone(worker, orders, prefix + "alone-", UNLOADED_TASKS, args.task_latency_ms)
        say(f"{label}: {args.tasks} tasks, each calling the carrier for {args.task_latency_ms} ms")
        progress = Progress(worker, label, args.tasks, side.pool_size)
        cpu_before = worker.worker_cpu_seconds()
        progress.start()
        queued: dict[str, float] = {}
        started = time.monotonic()
        with worker.producer() as producer:
            for number, order in zip(range(args.tasks), itertools.cycle(orders)):
                task_id = f"{prefix}{number}"
                queued[task_id] = time.time()
                worker.send(TASK, [order], task_id, producer)
        queueing = time.monotonic() - started
        timeout = timeout_for(args.tasks, args.task_latency_ms, min(side.pool_size, args.threads))
        try:
            complete = progress.wait_for(args.tasks, timeout)
        finally:
            progress.stopping.set()
            progress.join()
        after = worker.scrape()
        cpu = cpu_used(cpu_before, worker.worker_cpu_seconds())
        elapsed = time.monotonic() - started  # from the first task queued to the last finished
    if not complete:
        say(f"{label}: {progress.finished} of {args.tasks} tasks finished within {timeout:.0f} s")
    done = finished_at(prefix, exclude=prefix + "alone-")
    window = measure.Window(progress.base, after)
    latencies = sorted(done[task_id] - queued[task_id] for task_id in done if task_id in queued)
    span = (max(done.values()) - min(queued.values())) if done else None
    failed = int(window.delta("celery_tasks_total", state="FAILURE"))
    return {
        "rps": len(latencies) / span if span else 0.0,
        "requests": len(latencies),
        "failures": failed + (args.tasks - progress.finished),  # failed, or not finished in time
        "locust_requests": None,
        "locust_rps": None,
        "latency_p50_ms": percentile_ms(latencies, 0.50),
        "latency_p95_ms": percentile_ms(latencies, 0.95),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
        **connection_figures(window),
        "max_checked_out": int(progress.max_checked_out),
        "worker_cpu_ms_per_request": ms(ratio(cpu, progress.finished)),
        "worker_busy_percent": ratio(100 * cpu, elapsed) if cpu is not None else None,
        "wall_seconds": round(elapsed, 1),
        "queueing_seconds": round(queueing, 2),
        "unloaded_latency_ms": unloaded,
        "unloaded_hold_mean_ms": None,
        "thread_bound_rps": ratio(args.threads * 1000, unloaded),
        "pool_size": side.pool_size,
        "locust_report": None,
        "server": "worker",
        "tasks": args.tasks,
        "task_latency_ms": args.task_latency_ms,
        "worker_log": worker.log_path.name,
    }


def run_alone(worker: Worker, orders: list[int], prefix: str, count: int, latency_ms: int) -> float | None:
    """The median time from queueing to confirmation of `count` tasks, each alone on the idle worker.

    These also open the pool's connections, whose first checkout is pinged: not
    what the timed tasks should show.
    """
    times = []
    for number in range(count):
        task_id = f"{prefix}{number}"
        queued = time.time()
        worker.send(TASK, [orders[number % len(orders)]], task_id)
        done = wait_for_confirmation(task_id, timeout=30 + latency_ms / 1000)
        if done is None:
            raise StartError(f"a task sent to the worker did not finish; its log:\n{worker.log_tail()}")
        times.append(done - queued)
    return statistics.median(times) * 1000 if times else None


def wait_for_confirmation(task_id: str, timeout: float) -> float | None:
    """When the task's confirmation was written (a Unix time), once it is; None after `timeout`."""
    from django.db import connections

    from apps.orders.models import Confirmation

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sent = Confirmation.objects.filter(task_id=task_id).values_list("sent_at", flat=True).first()
            if sent is not None:
                return sent.timestamp()
            time.sleep(0.01)
        return None
    finally:
        connections.close_all()


def finished_at(prefix: str, exclude: str) -> dict[str, float]:
    """{task id: when its confirmation was written} for the run's tasks; deletes the confirmations."""
    from django.db import connections

    from apps.orders.models import Confirmation

    mine = Confirmation.objects.filter(task_id__startswith=prefix)
    done = {
        task_id: sent.timestamp()
        for task_id, sent in mine.values_list("task_id", "sent_at")
        if not task_id.startswith(exclude)
    }
    mine.delete()  # leave the shop as it was
    connections.close_all()
    return done


def percentile_ms(sorted_seconds: list[float], q: float) -> float | None:
    if not sorted_seconds:
        return None
    return sorted_seconds[min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))] * 1000


# make worker, and queueing by hand


def serve(concurrency: int, seed: str) -> None:
    """Prepare the database as `make run` does, then become the worker (loglevel INFO)."""
    from devtools.serve import configure_environment, prepare

    configure_environment()
    prepare(None if seed == "none" else seed, static=False)
    from django.conf import settings

    broker = settings.CELERY_BROKER_URL
    if broker.startswith("filesystem://"):
        broker += f" (folder {Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS['data_folder_in']).parent})"
    release = os.environ.get("DB_RELEASE", "cursor")
    say(f"Celery worker, {concurrency} threads, DB_RELEASE={release}, broker {broker}; Ctrl-C stops it")
    say("queue confirmations from another terminal: .venv/bin/python -m loadtests.tasks queue 100")
    command = [
        sys.executable, "-m", "celery", "-A", "project", "worker",
        "--pool", "threads", "--concurrency", str(concurrency), "--loglevel", "INFO",
    ]  # fmt: skip
    os.execv(sys.executable, command)


def queue(count: int, timeout: float) -> int:
    """Queue `count` confirmations for the running worker, wait for them, say how they went."""
    import django

    from devtools.serve import configure_environment

    configure_environment()
    django.setup()
    from django.conf import settings
    from django.db import connections

    from apps.orders.models import Confirmation
    from apps.orders.tasks import confirm_order
    from project.celery import make_broker_folders

    make_broker_folders(settings.CELERY_BROKER_TRANSPORT_OPTIONS)
    prefix = f"queued-{uuid.uuid4().hex[:8]}-"
    orders = order_ids()
    started = time.monotonic()
    for number, order in zip(range(count), itertools.cycle(orders)):
        confirm_order.apply_async([order], task_id=f"{prefix}{number}")
    say(f"queued {count} confirm_order tasks; waiting for the worker (make worker) to confirm them")
    mine = Confirmation.objects.filter(task_id__startswith=prefix)
    while (done := mine.count()) < count and time.monotonic() - started < timeout:
        time.sleep(0.5)
    held = mine.filter(connection_held_during_call=True).count()
    connections.close_all()
    seconds = time.monotonic() - started
    say(
        f"{done} of {count} confirmed in {seconds:.1f} s ({done / seconds:.1f} tasks/s); "
        f"{held} held a database connection during the carrier's call"
    )
    return 0 if done == count else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.tasks", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run a worker on the embedded PostgreSQL (or DATABASE_URL)")
    worker.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("CELERY_WORKER_CONCURRENCY") or 32)
    )
    worker.add_argument("--seed", default="small", help="seed size, or 'none' (default small)")
    queued = commands.add_parser("queue", help="queue confirmations for a running worker and wait for them")
    queued.add_argument("count", type=int, nargs="?", default=100)
    queued.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    args = parser.parse_args(argv)
    if args.command == "worker":
        serve(args.concurrency, args.seed)
        return 0  # not reached: the worker replaced this process
    return queue(args.count, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
