"""The Celery app of the shop's task worker.

    celery -A project worker --pool threads --concurrency 32      (`make worker`)

Its configuration is Django's CELERY_* settings (project/settings.py): the broker
(CELERY_BROKER_URL; by default a folder on this disk), the threads pool. Importing
this module creates the app and connects to nothing; the receivers below act only
in a worker:

* at start, the embedded PostgreSQL must be running when DATABASE_URL is unset (as
  for gunicorn), the filesystem broker's folders are made, and the threads are given
  two malloc arenas to share and a thread that gives malloc's free pages back
  (project/allocator.py, as gunicorn's workers are);
* around each task, its use of database connections is summed up as a request's is
  (apps/metrics): a task is a worker's request. Celery's Django fix-up closes the
  task's connections after it, which on the release engines has nothing left to do,
  and on stock Django gives back the connection the task held since its first query;
* once it takes tasks, WORKER_READY_FILE is made (a readiness probe);
* when it stops, after its running tasks have finished, every pool is closed: the
  worker's connections end with it instead of with the process.

A worker writes its metrics to PROMETHEUS_MULTIPROC_DIR when that is set
(loadtests/tasks.py reads them from there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def prepare_worker(**kwargs) -> None:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from project import allocator

    # Celery logs and carries on past an exception raised here; SystemExit stops the worker.
    try:
        trim_seconds = allocator.trim_seconds()
    except ImproperlyConfigured as exc:
        sys.exit(f"error: {exc}")
    allocator.share_arenas()  # before the pool's threads start
    # In this process: the threads pool's. Under the prefork pool, each child would start
    # its own, from worker_process_init.
    allocator.start_trimming(trim_seconds)

    if not os.environ.get("DATABASE_URL"):
        # The embedded PostgreSQL is for local use; the worker does not start it (`make worker` does).
        from devtools import localdb

        try:
            localdb.require_running()
        except localdb.LocalDatabaseError as exc:
            sys.exit(f"error: {exc}")
    make_broker_folders(settings.CELERY_BROKER_TRANSPORT_OPTIONS)


def make_broker_folders(options: dict) -> None:
    """The filesystem transport's folders, which kombu expects to exist."""
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if key in options:
            Path(options[key]).mkdir(parents=True, exist_ok=True)


def eager(task) -> bool:
    """Run in the caller's thread (task_always_eager, apply()): the caller's request counts it."""
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


@signals.task_prerun.connect
def task_started(sender=None, **kwargs) -> None:
    from apps.metrics import receivers

    if eager(sender):
        return
    from apps.metrics.requests import RequestUsage, current

    receivers.on_request_started(sender)
    current.set(RequestUsage())


@signals.task_postrun.connect
def task_finished(sender=None, state=None, **kwargs) -> None:
    from django.db import connections

    from apps.metrics import receivers

    if eager(sender):
        return
    # What the Django fix-up does next, done first: a checkout still open (stock
    # Django's) must end before the task is summed up.
    connections.close_all()
    receivers.on_request_finished(sender)
    task_outcomes().labels(getattr(sender, "name", "?"), state or "UNKNOWN").inc()


_task_outcomes = None


def task_outcomes():
    """celery_tasks_total{task, state}: tasks finished, by outcome (SUCCESS, FAILURE, RETRY...)."""
    global _task_outcomes
    if _task_outcomes is None:
        from prometheus_client import Counter

        _task_outcomes = Counter("celery_tasks", "Tasks this worker finished, by outcome.", ("task", "state"))
    return _task_outcomes


@signals.worker_ready.connect
def announce_ready(**kwargs) -> None:
    from django.conf import settings

    if settings.WORKER_READY_FILE:
        Path(settings.WORKER_READY_FILE).write_text(f"{os.getpid()}\n")


@signals.worker_shutdown.connect
def close_pools(**kwargs) -> None:
    """The worker stops: its pools close, and with them every connection it opened."""
    from django.conf import settings
    from django.db import connections

    if settings.WORKER_READY_FILE:
        Path(settings.WORKER_READY_FILE).unlink(missing_ok=True)
    # Sent after the pool's threads have finished their tasks, whose connections
    # are back in the pools by then.
    for connection in connections.all():
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()
