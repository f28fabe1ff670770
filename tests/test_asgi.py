"""The site under a real ASGI server: gunicorn with uvicorn workers, as the project serves ASGI.

Each test starts the site on the test database with a pool of its own size and
looks at it from outside: PostgreSQL's pg_stat_activity (the site's sessions
carry an application_name of their own), the answers, and /metrics. A request
is summed up in /metrics when Django sends request_finished, so a count there
says that the signal ran.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection, connections

from apps.orders.export import TRAILER
from apps.web.unavailable import RETRY_AFTER_SECONDS
from backends.errors import POOL_EXHAUSTED
from backends.release import hold_connection
from loadtests.measure import Scrape
from tests.conftest import POOL, backend_pid, holding
from tests.servers import direct_connection, get
from tests.test_shop_support import make_shop

# The site's sessions are found in pg_stat_activity, not behind PgBouncer.
pytestmark = [pytest.mark.load_suite, pytest.mark.direct_connection, pytest.mark.django_db(transaction=True)]

SITE = "asgi-site"  # the application_name of the site's sessions (PGAPPNAME)
NEVER_MS = "600000"  # an external call that outlasts the test: its client goes away first


@pytest.fixture
def serve_asgi(serve):
    """The site under uvicorn workers (one process), its sessions named SITE in pg_stat_activity."""

    def start(release: str = settings.DB_RELEASE, **env: str):
        return serve(
            workers=1,
            env={"SERVER": "asgi", "DB_POOL": POOL, "DB_RELEASE": release, "PGAPPNAME": SITE, **env},
        )

    return start


# Looking from outside ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    pid: int
    state: str
    query: str


SITE_SESSIONS = (
    "SELECT pid, state, query FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = %s"
)


def site_sessions() -> list[Session]:
    """The site's server sessions on the test database, as PostgreSQL sees them."""
    with direct_connection() as conn:
        return [Session(*row) for row in conn.execute(SITE_SESSIONS, [SITE])]


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> object:
    """Until condition() is true (and return it), or fail after `timeout` seconds saying `what`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return result


def scrape(server) -> Scrape:
    status, text = get(f"{server.base}/metrics")
    assert status == 200, text
    return Scrape.parse(text)


def requests_summed_up(server) -> float:
    """Requests that used the database and that request_finished has summed up."""
    return scrape(server).total("db_request_checkouts_count", alias="default")


def checked_out(server) -> float:
    """Connections out of the site's pool now, as the pool says."""
    return scrape(server).total("db_connections_checked_out", alias="default")


def pool_is_at_rest(server) -> bool:
    """Every session the site has is idle in its pool, as the pool and PostgreSQL both say."""
    metrics = scrape(server)
    sessions = site_sessions()
    return (
        metrics.total("db_connections_checked_out", alias="default") == 0
        and metrics.total("db_pool_connections", alias="default", state="in_use") == 0
        and metrics.total("db_pool_connections", alias="default", state="idle") == len(sessions)
        and all(session.state == "idle" for session in sessions)
    )


def assert_log_is_clean(server, *, warnings: int = 0) -> None:
    """No traceback, no ERROR line, and only the WARNING lines expected (a pool's too)."""
    log = server.output()
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]
    assert log.count(" WARNING ") == warnings, log[-3000:]


class SessionPeak(threading.Thread):
    """How many sessions the site had at most, read from pg_stat_activity while the block runs."""

    def __init__(self) -> None:
        super().__init__(name="session-peak", daemon=True)
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with direct_connection() as conn:
            while not self.stopping.wait(0.02):
                self.peak = max(self.peak, len(conn.execute(SITE_SESSIONS, [SITE]).fetchall()))

    def __enter__(self) -> SessionPeak:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.join(10)


# A small HTTP client: many requests at once, and one that hangs up ---------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return Answer(int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body)


def request_bytes(path: str) -> bytes:
    # HTTP/1.0: the server closes the connection after the answer, which ends the body.
    return f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def fetch(port: int, path: str) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(path))
        await writer.drain()
        # A server that stopped answering fails the test rather than hanging it.
        return parse(await asyncio.wait_for(reader.read(), timeout=120))
    finally:
        writer.close()
        await writer.wait_closed()


def fetch_all(server, paths: list[str]) -> list[Answer]:
    """Send every request at once, each on a connection of its own; the answers in order."""

    async def together() -> list[Answer]:
        return await asyncio.gather(*(fetch(server.port, path) for path in paths))

    return asyncio.run(together())


def open_request(server, path: str, receive_buffer: int | None = None) -> socket.socket:
    """Send a request on a socket of its own; the test reads the answer, or hangs up."""
    sock = socket.socket()
    sock.settimeout(30)
    if receive_buffer is not None:
        # Before connecting: the receive window is agreed on then.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request_bytes(path))
    return sock


def product_read_by_the_site() -> bool:
    """A site session has run the async view's first read (aget of the product)."""
    return any('FROM "catalog_product"' in session.query for session in site_sessions())


# Many requests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("release", ["cursor", "request"])
def test_requests_leave_at_most_max_size_connections_and_none_checked_out(serve_asgi, release):
    shop = make_shop()
    max_size = 4
    server = serve_asgi(
        release, DB_POOL_MAX_SIZE=str(max_size), DB_POOL_TIMEOUT="60", EXTERNAL_LATENCY_MS="20"
    )
    path = f"/api/async/products/{shop.novel.pk}/with-external-call/"

    with SessionPeak() as sessions:
        for _ in range(100):
            status, body = get(f"{server.base}{path}")
            assert status == 200, body
        wait_until(lambda: requests_summed_up(server) == 100, "the 100 requests summed up")
        answers = fetch_all(server, [path] * 200)
        assert [answer.status for answer in answers] == [200] * 200, answers[:3]
        wait_until(lambda: requests_summed_up(server) == 300, "the 300 requests summed up")

    assert 1 <= sessions.peak <= max_size
    # Django ran each request's queries on a thread of that request's own,
    # gone by now: a connection one of them kept would still be checked out.
    wait_until(lambda: pool_is_at_rest(server), "every connection idle in the pool")
    assert 1 <= len(site_sessions()) <= max_size
    assert scrape(server).total("db_requests_ended_holding_total", alias="default") == 0
    assert_log_is_clean(server)


# A client that goes away ----------------------------------------------------------------------------


@pytest.mark.parametrize("release", ["cursor", "request"])
def test_client_disconnect_gives_connection_back(serve_asgi, release):
    shop = make_shop()
    # One connection: the next request is only served if it came back.
    server = serve_asgi(release, DB_POOL_MAX_SIZE="1", DB_POOL_TIMEOUT="1", EXTERNAL_LATENCY_MS=NEVER_MS)
    assert requests_summed_up(server) == 0

    client = open_request(server, f"/api/async/products/{shop.novel.pk}/with-external-call/")
    try:
        wait_until(product_read_by_the_site, "the view read the product")
        # It awaits the external call now: stock Django holds the connection meanwhile, release not.
        held = 1 if release == "request" else 0
        wait_until(lambda: checked_out(server) == held, f"{held} connection(s) out while it awaits")
    finally:
        client.close()

    # Django cancels the view and sends request_finished, which closes the
    # request's connections (giving them back) and sums the request up.
    wait_until(lambda: requests_summed_up(server) == 1, "the request summed up at its end")
    wait_until(lambda: pool_is_at_rest(server), "the connection idle in the pool")
    status, body = get(f"{server.base}/readyz")
    assert status == 200, body
    assert_log_is_clean(server)


# A stream -------------------------------------------------------------------------------------------


def add_orders(shop, orders: int) -> int:
    """`orders` orders of one of each product, written in two statements; how many lines in all."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO orders_order (number, customer_id, status, created_at) "
            "SELECT 'A-' || lpad(n::text, 8, '0'), %s, 'paid', now() - interval '1 day' "
            "FROM generate_series(1, %s) AS n",
            [shop.ada.pk, orders],
        )
        cursor.execute(
            "INSERT INTO orders_orderline (order_id, product_id, quantity, unit_price) "
            "SELECT o.id, p.id, 1, p.price FROM orders_order o CROSS JOIN catalog_product p"
        )
        return cursor.rowcount


def send_buffer_limit() -> int:
    """The most a TCP socket's send buffer grows to on this machine (net.ipv4.tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024  # Linux's default


def in_transaction() -> bool:
    return any(session.state == "idle in transaction" for session in site_sessions())


@pytest.mark.parametrize("release", ["cursor", "request"])
def test_async_export_keeps_its_connection_until_the_stream_ends(serve_asgi, release):
    # Twice what the server's socket can buffer (a line is over 80 bytes, an
    # order has three): the stream cannot end before the test reads it.
    lines = add_orders(make_shop(), orders=2 * send_buffer_limit() // (3 * 80))
    server = serve_asgi(release, DB_POOL_MAX_SIZE="2")

    # A small receive window, and the test reads nothing more for now: the
    # stream stops between two blocks, its cursor and transaction open.
    client = open_request(server, "/orders/async/export.csv", receive_buffer=8192)
    with client:
        received = client.recv(4096)
        assert received.split(b" ", 2)[1] == b"200", received[:300]
        wait_until(in_transaction, "the export's session idle in its transaction")
        assert checked_out(server) == 1

        while chunk := client.recv(1 << 16):
            received += chunk
    answer = parse(received)

    assert answer.body.decode().endswith(TRAILER.format(count=lines))
    assert answer.body.count(b"\r\n") == lines + 2  # the header, the lines, the trailer
    wait_until(lambda: not in_transaction(), "the export's transaction over")
    wait_until(lambda: pool_is_at_rest(server), "its connection idle in the pool")
    wait_until(lambda: requests_summed_up(server) == 1, "the export summed up at its end")
    assert_log_is_clean(server)


@pytest.mark.parametrize("release", ["cursor", "request"])
def test_async_export_gives_its_connection_back_when_the_client_goes_away(serve_asgi, release):
    add_orders(make_shop(), orders=2 * send_buffer_limit() // (3 * 80))
    server = serve_asgi(release, DB_POOL_MAX_SIZE="2")

    with open_request(server, "/orders/async/export.csv", receive_buffer=8192) as client:
        client.recv(4096)
        wait_until(in_transaction, "the export's session idle in its transaction")

    # Django closes the response: the export's generator ends on the request's
    # thread, its transaction rolled back, and the connection goes back.
    wait_until(lambda: not in_transaction(), "the export's transaction over")
    wait_until(lambda: pool_is_at_rest(server), "its connection idle in the pool")
    wait_until(lambda: requests_summed_up(server) == 1, "the export summed up at its end")
    assert_log_is_clean(server)


# hold_connection() from async code -----------------------------------------------------------------


def test_async_hold_connection_keeps_one_session_across_awaits_and_resets_it(serve_asgi):
    shop = make_shop()
    # One connection: both requests run on the same server session.
    server = serve_asgi("cursor", DB_POOL_MAX_SIZE="1", DB_POOL_MIN_SIZE="1", EXTERNAL_LATENCY_MS="50")
    path = f"{server.base}/api/async/products/{shop.novel.pk}/with-time-limit/"

    answers = []
    for _ in range(2):
        status, body = get(path)
        assert status == 200, body
        answers.append(json.loads(body))

    for answer in answers:
        assert answer["external"]["db_connection_held_during_call"] is True
        assert answer["session"]["same_session_after_call"] is True
        assert answer["session"]["statement_timeout_after_call"] == "2s"
    # The second request borrowed the first one's session, reset in between.
    first, second = (answer["session"] for answer in answers)
    assert second["backend_pid"] == first["backend_pid"]
    assert second["statement_timeout_found"] == first["statement_timeout_found"] == "0"
    wait_until(lambda: pool_is_at_rest(server), "the connection idle in the pool")


def session_setting(alias: str) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        return cursor.fetchone()[0]


def set_session_setting(alias: str, value: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT set_config('application_name', %s, false)", [value])


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_async_with_hold_connection_keeps_one_session_across_awaits(database):
    alias = database(release="cursor", max_size=1)
    before = session_setting(alias)

    async def session_work() -> list:
        seen = []
        async with hold_connection(using=alias):
            seen.append(await sync_to_async(backend_pid)(alias))
            await sync_to_async(set_session_setting)(alias, "held")
            await asyncio.sleep(0.01)
            seen.append(await sync_to_async(holding)(alias))
            seen.append(await sync_to_async(backend_pid)(alias))
            seen.append(await sync_to_async(session_setting)(alias))
        seen.append(await sync_to_async(holding)(alias))
        return seen

    pid, held_after_await, pid_after_await, setting, held_after_block = async_to_sync(session_work)()

    assert (held_after_await, pid_after_await, setting) == (True, pid, "held")
    assert not held_after_block, "given back when the block ends"
    # The pool's one connection again, its session reset before it was lent.
    assert backend_pid(alias) == pid
    assert session_setting(alias) == before


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_hold_connection_decorates_an_async_function_across_its_awaits(database):
    alias = database(release="cursor", max_size=1)

    @hold_connection(using=alias)
    async def session_work() -> tuple:
        pid = await sync_to_async(backend_pid)(alias)
        await asyncio.sleep(0.01)
        return pid, await sync_to_async(holding)(alias), await sync_to_async(backend_pid)(alias)

    pid, held_after_await, pid_after_await = async_to_sync(session_work)()

    assert (held_after_await, pid_after_await) == (True, pid)
    assert not holding(alias), "given back when the function returns"


# An exhausted pool --------------------------------------------------------------------------------


def test_exhausted_pool_answers_503_with_retry_after(serve_asgi):
    shop = make_shop()
    # Stock Django keeps a request's connection through its awaited call: one
    # such request takes the pool's only connection for as long as it waits.
    server = serve_asgi("request", DB_POOL_MAX_SIZE="1", DB_POOL_TIMEOUT="0.5", EXTERNAL_LATENCY_MS=NEVER_MS)
    slow = f"/api/async/products/{shop.novel.pk}/with-external-call/"
    holder = open_request(server, slow)
    try:
        wait_until(product_read_by_the_site, "the first request took the connection")
        # Async views (JSON), a plain view run in a thread (HTML), a stream before its first byte.
        json_answers = fetch_all(server, [slow, f"/api/async/products/{shop.kettle.pk}/summary/"])
        text_answers = fetch_all(server, ["/products/", "/orders/async/export.csv"])
    finally:
        holder.close()

    for answer in [*json_answers, *text_answers]:
        assert answer.status == 503, answer
        assert answer.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    for answer in json_answers:
        assert json.loads(answer.body)["cause"] == POOL_EXHAUSTED
    for answer in text_answers:
        assert b"every pooled connection is in use" in answer.body
    # Once the first request has gone, the pool serves again.
    wait_until(lambda: get(f"{server.base}/readyz")[0] == 200, "the pool serving again")
    # One line each, as under WSGI.
    assert server.output().count("WARNING apps.web.unavailable 503 for GET") == 4
    assert_log_is_clean(server, warnings=4)
