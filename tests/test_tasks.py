"""The order-confirmation task under a real Celery worker (threads pool) on the test database.

Each test starts `celery -A project worker --pool threads` with a pool of its own
size and a broker folder of its own (loadtests.tasks.Worker), queues tasks, and
looks from outside: the confirmation each task writes (with its own report of
whether it held a connection during the carrier's call), the worker's metrics,
and PostgreSQL's pg_stat_activity (the worker's sessions carry an
application_name of their own).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import yaml
from django.db import connections

from apps.customers.models import Customer
from apps.orders.models import Confirmation, Order
from loadtests import tasks
from loadtests.tasks import FILESYSTEM_BROKER, Worker
from tests.conftest import POOL
from tests.servers import ROOT, database_url_for_tests

pytestmark = [pytest.mark.load_suite, pytest.mark.django_db(transaction=True)]

WORKER = "task-worker"  # the application_name of the worker's sessions (PGAPPNAME)
CONFIRM = "apps.orders.tasks.confirm_order"
CONFIRM_ONCE = "apps.orders.tasks.confirm_order_once"


@pytest.fixture
def worker(tmp_path) -> Callable[..., Worker]:
    """Start a worker on the test database: ``worker(release="cursor", pool_size=2, ...)``."""
    started: list[Worker] = []

    def start(
        release: str = "cursor", pool_size: int = 2, threads: int = 4, latency_ms: int = 300, **env: str
    ) -> Worker:
        env = {
            "DATABASE_URL": database_url_for_tests(),
            "DB_RELEASE": release,
            "DB_POOL": POOL,
            "DB_POOL_MIN_SIZE": "1",
            "DB_POOL_MAX_SIZE": str(pool_size),
            "TASK_EXTERNAL_LATENCY_MS": str(latency_ms),
            "PGAPPNAME": WORKER,
            **env,
        }
        server = Worker(tmp_path, env, threads, name=f"worker{len(started)}", broker_url=FILESYSTEM_BROKER)
        started.append(server)
        server.start()
        server.wait_until_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def order() -> Order:
    customer = Customer.objects.create(name="Grace Hopper", email="grace@private.example")
    return Order.objects.create(customer=customer, number="S-00000001")


def queue(worker: Worker, task: str, order: Order) -> str:
    task_id = f"test-{uuid.uuid4()}"
    worker.send(task, [order.pk], task_id)
    return task_id


def confirmation_of(task_id: str, worker: Worker, timeout: float = 30) -> Confirmation:
    """The confirmation the task wrote, once it has; fails with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while (found := Confirmation.objects.filter(task_id=task_id).first()) is None:
        assert time.monotonic() < deadline, f"{task_id} wrote nothing in {timeout} s:\n{worker.log_tail()}"
        time.sleep(0.05)
    return found


def tasks_finished(worker: Worker, state: str) -> int:
    return int(worker.scrape().total("celery_tasks_total", state=state))


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return result


def worker_sessions() -> int:
    """The worker's server sessions on the test database, as PostgreSQL counts them."""
    s = connections["default"].settings_dict
    with psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], password=s["PASSWORD"] or None,
        dbname=s["NAME"], autocommit=True,
    ) as conn:  # fmt: skip
        (count,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            [WORKER],
        ).fetchone()
    return count


def test_task_gives_its_connection_back_before_its_external_call(worker, order):
    server = worker(release="cursor")
    confirmation = confirmation_of(queue(server, CONFIRM, order), server)
    assert confirmation.order == order
    assert confirmation.connection_held_during_call is False


def test_stock_django_keeps_the_tasks_connection_through_its_call(worker, order):
    server = worker(release="request")
    confirmation = confirmation_of(queue(server, CONFIRM, order), server)
    assert confirmation.connection_held_during_call is True


def test_task_inside_atomic_keeps_its_connection(worker, order):
    server = worker(release="cursor")
    confirmation = confirmation_of(queue(server, CONFIRM_ONCE, order), server)
    assert confirmation.connection_held_during_call is True


def test_tasks_waiting_on_their_calls_share_one_connection(worker, order):
    # Each call outlasts the pool's timeout three times over: a task that kept the
    # connection through its call would leave the other none.
    server = worker(release="cursor", pool_size=1, threads=2, latency_ms=3000, DB_POOL_TIMEOUT="1")
    first, second = queue(server, CONFIRM, order), queue(server, CONFIRM, order)
    assert confirmation_of(first, server).connection_held_during_call is False
    assert confirmation_of(second, server).connection_held_during_call is False
    assert tasks_finished(server, "FAILURE") == 0


def test_stock_django_leaves_the_second_task_no_connection(worker, order):
    server = worker(release="request", pool_size=1, threads=2, latency_ms=3000, DB_POOL_TIMEOUT="1")
    queue(server, CONFIRM, order)
    queue(server, CONFIRM, order)
    wait_until(lambda: tasks_finished(server, "SUCCESS") + tasks_finished(server, "FAILURE") >= 2, "both")
    assert tasks_finished(server, "FAILURE") == 1
    assert "PoolExhausted" in server.log()
    assert server.scrape().total("db_pool_timeouts_total") == 1


@pytest.mark.direct_connection  # the worker's sessions are PostgreSQL's, not PgBouncer's
def test_stopping_the_worker_gives_back_every_connection(worker, order):
    server = worker(release="cursor", pool_size=2, latency_ms=2000)
    task_id = queue(server, CONFIRM, order)
    # The task's two reads are done (each checkout counted as it ended): it is in its call.
    wait_until(lambda: server.scrape().total("db_connection_checkouts_total") >= 2, "the task's reads")
    assert worker_sessions() >= 1

    assert server.stop() == 0, server.log_tail()  # a warm shutdown: the running task finishes first
    assert confirmation_of(task_id, server, timeout=1).connection_held_during_call is False
    wait_until(lambda: worker_sessions() == 0, "the worker's sessions ended", timeout=5)
    assert "Traceback" not in server.log()


def test_measure_side_runs_the_tasks_and_reports_them_as_a_side(tmp_path, monkeypatch, order):
    from argparse import Namespace

    from loadtests.side import Side

    # The worker the comparison starts reads DATABASE_URL from the environment.
    monkeypatch.setenv("DATABASE_URL", database_url_for_tests())
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    args = Namespace(pool=POOL, threads=4, out=tmp_path, tasks=12, task_latency_ms=50)
    figures = tasks.measure_side(Side("release", "cursor", 2), args, "tasks/release", "tasks-release")

    assert figures["server"] == "worker"
    assert figures["requests"] == 12
    assert figures["failures"] == 0
    assert figures["rps"] > 0
    assert figures["checkouts_per_request"] == 3  # two reads, one write
    assert figures["pool_size"] == 2
    assert not Confirmation.objects.exists(), "the run deletes the confirmations it made"


# The broker that needs nothing but Python -----------------------------------------------------------


def test_filesystem_broker_shows_a_message_to_readers_only_once_it_is_whole(tmp_path, monkeypatch):
    from kombu import Connection

    from project import broker
    from project.settings import broker_settings

    options = broker_settings(FILESYSTEM_BROKER, tmp_path)
    messages = Path(options["broker_transport_options"]["data_folder_in"])
    messages.mkdir(parents=True)
    # A queue of this test's own: kombu keeps the bindings it has seen per process, not per folder.
    name = f"test-{uuid.uuid4().hex}"
    seen_while_writing: list[list[str]] = []
    serialize = broker.dumps

    def dumps(payload):
        # Called as the message is written: what would a worker listing the folder take now?
        seen_while_writing.append([p.name for p in messages.iterdir() if p.name.endswith(f".{name}.msg")])
        return serialize(payload)

    monkeypatch.setattr(broker, "dumps", dumps)
    with Connection(
        FILESYSTEM_BROKER,
        transport=options["broker_transport"],
        transport_options=options["broker_transport_options"],
    ) as connection:
        queue = connection.SimpleQueue(name)
        queue.put({"order": 1})
        assert seen_while_writing == [[]]
        assert queue.get(timeout=1).payload == {"order": 1}
        queue.close()


# The worker as docker-compose.yml runs it ---------------------------------------------------------

COMPOSE = ROOT / "docker-compose.yml"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_compose_tasks_profile_is_valid():
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--profile", "tasks", "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


class ComposeWorker(Worker):
    """The compose service's command, run here with this interpreter's Celery."""

    def __init__(self, service: dict, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.service_command = service["command"]

    def command(self) -> list[str]:
        return [sys.executable, "-m", *self.service_command]


def test_worker_service_runs_the_threads_pool_on_the_release_engine_behind_a_pinned_redis(tmp_path, order):
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    service, redis = services["worker"], services["redis"]
    assert service["profiles"] == redis["profiles"] == ["tasks"]
    name, _, tag = redis["image"].partition(":")
    assert name == "redis" and any(c.isdigit() for c in tag), redis["image"]
    assert service["environment"]["CELERY_BROKER_URL"].startswith("redis://redis:")
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    ready_file = service["environment"]["WORKER_READY_FILE"]
    assert ready_file in service["healthcheck"]["test"]

    # Compose's command and engine, here: the test database, a broker folder for Redis.
    env = {
        "DATABASE_URL": database_url_for_tests(),
        "DB_POOL": POOL,
        "DB_RELEASE": service["environment"]["DB_RELEASE"],
        "PGAPPNAME": WORKER,
    }
    server = ComposeWorker(service, tmp_path, env, 32, name="compose", broker_url=FILESYSTEM_BROKER)
    try:
        server.start()
        server.wait_until_ready()
        assert "(thread)" in server.log(), "the threads pool"
        confirmation = confirmation_of(queue(server, CONFIRM, order), server)
        assert confirmation.connection_held_during_call is False
    finally:
        stopped = server.stop()
    assert stopped == 0, server.log_tail()
    assert not server.ready_file.exists(), "the healthcheck fails once the worker stops"
