"""gunicorn settings for the sample site, read from the environment.

    SERVER            wsgi: project.wsgi on gthread workers    wsgi
                      asgi: project.asgi on uvicorn workers (uvicorn_worker.UvicornWorker)
    GUNICORN_BIND     address to listen on            127.0.0.1:8000
    GUNICORN_WORKERS  worker processes                2
    GUNICORN_THREADS  threads per worker (wsgi)       8
    GUNICORN_ACCESS_LOG  "1" to log every request     off
    MALLOC_ARENA_MAX  glibc's malloc arenas per process  2 (project/allocator.py)
    MALLOC_TRIM_SECONDS  between giving malloc's free pages back, each worker (0: never)  60

Each worker opens its own connection pool after the fork (a pool's sockets and
threads must never be shared with a forked child), and writes its metrics to
PROMETHEUS_MULTIPROC_DIR so that /metrics adds all workers up.

Under ASGI a worker runs each request's synchronous work (the ORM calls of an
async view included) on a thread of that request's own, so nothing but the
clients bounds the requests in flight; GUNICORN_THREADS does not apply.
`-k` and an app given on the command line still override these.
"""

import contextlib
import os
import shutil
import sys
from pathlib import Path

from project import allocator
from project import environment as env

BASE_DIR = Path(__file__).resolve().parent.parent

SERVERS = {
    "wsgi": ("project.wsgi:application", "gthread"),
    "asgi": ("project.asgi:application", "uvicorn_worker.UvicornWorker"),
}
server = env.choice("SERVER", SERVERS, "wsgi")
wsgi_app, worker_class = SERVERS[server]
bind = env.string("GUNICORN_BIND", "127.0.0.1:8000")
workers = env.integer("GUNICORN_WORKERS", 2)
threads = env.integer("GUNICORN_THREADS", 8)
timeout = 30
graceful_timeout = 10
accesslog = "-" if env.boolean("GUNICORN_ACCESS_LOG") else None
chdir = str(BASE_DIR)

# In the master, before any thread, for the workers it forks.
allocator.share_arenas()
trim_seconds = allocator.trim_seconds()  # read here: a bad value stops the start, not each worker

# One folder per address, so a release and a baseline site started from the same
# checkout keep their numbers apart. Set here, in the master, before prometheus_client
# is imported (it reads the variable once, at import).
_default_metrics_dir = BASE_DIR / ".metrics" / bind.replace(":", "_").replace("/", "_")
metrics_dir = Path(env.string("PROMETHEUS_MULTIPROC_DIR", str(_default_metrics_dir)))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

# Imported now, not in child_exit: that runs inside the master's SIGCHLD handler, which
# can interrupt the master (or itself, as workers exit together on SIGTERM) in the middle
# of that very import and fail with an ImportError on a partially initialised module.
from prometheus_client import multiprocess  # noqa: E402


def on_starting(server):
    if not env.string("DATABASE_URL"):
        # The embedded PostgreSQL is for local use; gunicorn does not start it (`make run` does).
        from devtools import localdb

        try:
            localdb.require_running()
        except localdb.LocalDatabaseError as exc:
            sys.exit(f"error: {exc}")
    # Values left by an earlier run would be added to this one's.
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    server.log.info("metrics of all workers in %s", metrics_dir)


def post_fork(server, worker):
    allocator.start_trimming(trim_seconds)
    # With preload_app the master may have touched the database: drop whatever
    # this child inherited so that it opens pools of its own.
    if "django.db" in sys.modules:
        from django.db import connections

        for connection in connections.all(initialized_only=True):
            connection.close()
            if hasattr(connection, "close_pool"):
                connection.close_pool()


def worker_exit(server, worker):
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()


def child_exit(server, worker):
    # Runs in a signal handler: an exception here would end the master with status 1.
    # A live gauge file left behind is the lesser harm.
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(worker.pid, str(metrics_dir))
