"""The soak (loadtests/soak.py): its verdicts from constructed samples, and one short real run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import psycopg
import pytest
from django.db import connection

from apps.orders.models import Confirmation, Order, OrderLine
from loadtests import soak
from tests.conftest import POOL
from tests.servers import ROOT, free_port
from tests.test_shop_support import make_order, make_shop


def points(*values: float, every: float = 60.0, start: float = 0.0) -> list[list[float]]:
    return [[start + i * every, v] for i, v in enumerate(values)]


def by_line(verdicts: list[soak.Verdict], line: str) -> dict[str, soak.Verdict]:
    return {v.subject: v for v in verdicts if v.line == line}


# Memory -------------------------------------------------------------------------------------------


def test_memory_growth_counts_from_minute_5_not_the_warm_up():
    # 30 minutes, a reading a minute: 60 -> 80 MB while warming up, then 80 -> 82.
    warming = [60 + 4 * i for i in range(5)]
    flat = [80 + 2 * i / 25 for i in range(26)]
    leaking = [80 + 10 * i / 25 for i in range(26)]
    found = soak.memory_verdicts(
        {"wsgi/1": points(*warming, *flat), "wsgi/2": points(*warming, *leaking)}, 1800
    )

    flat_verdict, leak_verdict = found
    assert flat_verdict.subject == "wsgi/1" and flat_verdict.passed
    assert flat_verdict.start == pytest.approx(80.08, abs=0.01)  # minute 5 on, not minute 0
    assert flat_verdict.note == "+2.3%"  # 80.08 -> 81.92 MB
    assert "from minute 5" in flat_verdict.rule
    assert not leak_verdict.passed and leak_verdict.note == "+11.4%"


def test_a_run_shorter_than_10_minutes_measures_memory_from_its_middle_and_says_so():
    (verdict,) = soak.memory_verdicts({"asgi/7": points(50, 60, 70, 70, 70, 71, 71, every=10)}, 60)
    assert "from the middle (30 s" in verdict.rule
    assert verdict.start == 70 and verdict.end == 71 and verdict.passed


def test_a_worker_that_was_not_there_throughout_fails():
    rss = {"wsgi/1": points(80, 80, 80, 80, every=10), "wsgi/2": points(80, 80, every=5, start=25)}
    found = {v.subject: v for v in soak.memory_verdicts(rss, 40)}
    assert found["wsgi/1"].passed
    assert not found["wsgi/2"].passed and found["wsgi/2"].note == "worker not there throughout"


# Descriptors, connections -----------------------------------------------------------------------


def test_descriptors_and_connections_end_within_the_pool_size_of_the_start():
    series = {
        "fds": {
            "wsgi/1": points(30, 31, 30, 34, 34, 34, every=10),
            "wsgi/2": points(30, 30, 30, 35, 35, 35, every=10),
        },
        # The last reading comes after the load: the clients' sockets are gone, not a verdict's matter.
        "server_connections": {"shop": [*points(16, 16, 16, 16, 17, 16, every=10), [61, 2]]},
        "checked_out": {"wsgi": points(4, 3, 4, 0, every=10), "asgi": points(4, 4, 4, 1, every=10)},
    }
    errors = soak.error_summary({}, {}, [])
    found = soak.verdicts(series, 50, pool_size=4, errors=errors)

    fds = by_line(found, "fds")
    assert fds["wsgi/1"].passed and fds["wsgi/1"].note == "+4"
    assert not fds["wsgi/2"].passed and fds["wsgi/2"].note == "+5"
    assert by_line(found, "server_connections")["shop"].end == 16
    assert by_line(found, "server_connections")["shop"].passed
    checked_out = by_line(found, "checked_out")
    assert checked_out["wsgi"].passed and not checked_out["asgi"].passed  # one still out after the load


# 5xx ----------------------------------------------------------------------------------------------

SITE_LOG = """\
[2026-01-01 10:00:00 +0000] [10] [INFO] Booting worker with pid: 11
2026-01-01 10:00:05,001 WARNING psycopg.pool discarding closed connection: <psycopg.Connection [BAD]>
2026-01-01 10:00:05,002 WARNING apps.web.unavailable 503 for POST /api/orders/: connection lost mid-request \
(terminating connection due to administrator command)
2026-01-01 10:00:09,500 ERROR django.request Internal Server Error: /api/raw/reports/sales/
Traceback (most recent call last):
  File "apps/orders/views.py", line 3, in sales
    cursor.execute(sql)
ZeroDivisionError: division by zero
2026-01-01 10:00:09,600 WARNING apps.web.unavailable 503 for GET /products/: pool exhausted \
(couldn't get a connection after 5.00 sec)
"""


def test_5xx_are_grouped_by_page_and_cause_and_every_500_listed_with_its_error():
    failed = {
        "wsgi": [
            [100.0, 100.2, 503, "/api/orders/"],
            [101.0, 101.1, 503, "/api/orders/"],
            [140.0, 140.5, 503, "/products/"],  # long after the kill: not the fault's
            [130.0, 130.1, 500, "/api/raw/reports/sales/"],
            [131.0, 131.1, 0, "/products/"],
        ],
        "asgi": [],
    }
    faults = [{"kind": "kill", "at": 100.0}]
    errors = soak.error_summary(failed, {"wsgi": SITE_LOG, "asgi": ""}, faults)

    assert errors["500"]["count"] == 1
    assert errors["500"]["by_page"] == {"wsgi /api/raw/reports/sales/": 1}
    assert errors["500"]["logged"] == [
        {"site": "wsgi", "path": "/api/raw/reports/sales/", "cause": "Internal Server Error",
         "error": "ZeroDivisionError: division by zero"},
    ]  # fmt: skip
    assert errors["503"]["count"] == 3 and errors["503"]["outside_faults"] == 1
    assert errors["503"]["by_page"] == {"wsgi /api/orders/": 2, "wsgi /products/": 1}
    assert errors["503"]["by_cause"] == {"wsgi: connection lost mid-request": 1, "wsgi: pool exhausted": 1}
    assert (
        errors["503"]["example_error"]["wsgi: pool exhausted"] == "couldn't get a connection after 5.00 sec"
    )
    assert errors["no_answer"] == {"wsgi /products/": 1}

    found = soak.verdicts({}, 60, 4, errors)
    (five_hundred,) = by_line(found, "500").values()
    assert not five_hundred.passed and "ZeroDivisionError" in five_hundred.note
    assert by_line(found, "503")["all sites"].note == "1 outside the faults"
    text = "\n".join(soak.error_lines(errors))
    assert "logged by wsgi: /api/raw/reports/sales/: ZeroDivisionError: division by zero" in text


def test_a_503_during_the_restart_or_just_after_it_is_the_faults():
    restart = [{"kind": "restart", "at": 100.0, "back_at": 106.0}]
    assert soak.during_faults(105.0, restart)
    assert soak.during_faults(106.0 + soak.FAULT_GRACE_SECONDS, restart)
    assert not soak.during_faults(107.0 + soak.FAULT_GRACE_SECONDS, restart)
    assert not soak.during_faults(99.0, restart)


def test_the_request_log_is_read_as_it_grows_a_partial_line_waiting(tmp_path):
    path = tmp_path / "requests.log"
    path.write_text("1.0 1.1 200 /products/\n2.0 2.2 503 /api/orders/\n3.0 3.1 50")
    log = soak.RequestLog(path)
    log.read_new()
    assert (log.requests, log.errors_5xx()) == (2, 1)
    with path.open("a") as f:
        f.write("0 /api/raw/reports/sales/\n4.0 4.1 0 /products/\n")
    log.read_new()
    assert log.requests == 4 and log.errors_5xx() == 2
    assert [row[2] for row in log.failed] == [503, 500, 0]


def test_the_faults_come_every_few_minutes_and_the_restarts_as_planned():
    plan = soak.Plan(duration=1800, kill_every=240, restarts=[180, 1050], restart_seconds=5)
    events = plan.events()
    assert [t for t, kind in events if kind == "kill"] == [240 * n for n in range(1, 8)]
    assert [t for t, kind in events if kind == "restart"] == [180, 1050]
    assert events[0] == (180, "restart")
    assert soak.Plan(60, 0, [30], 0).events() == []


def test_one_restart_comes_in_the_warm_up_and_one_in_the_middle_of_what_is_measured():
    (first, second) = soak.restarts(soak.parse_args([]), 1800)
    assert first < soak.WARM_UP_SECONDS < second
    assert second == (soak.WARM_UP_SECONDS + 1800) / 2
    # Under 10 minutes memory is measured from the middle: the first restart comes before it.
    (first, second) = soak.restarts(soak.parse_args(["--minutes", "4"]), 240)
    assert first < 120 < second < 240
    assert soak.restarts(soak.parse_args(["--restart-at-seconds", "20", "10"]), 60) == [10, 20]
    assert soak.restarts(soak.parse_args(["--restart-seconds", "0"]), 1800) == []


class TheTestDatabase:
    """What Monitor needs of the soak's server: a connection, here to the tests' database."""

    def connect(self) -> psycopg.Connection:
        settings = connection.settings_dict
        return psycopg.connect(
            host=settings["HOST"], port=settings["PORT"] or None, user=settings["USER"],
            password=settings["PASSWORD"], dbname=settings["NAME"], autocommit=True,
        )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_old_orders_the_run_placed_go_with_their_lines_and_confirmations():
    shop = make_shop()
    seeded = make_order(shop.ada, [(shop.novel, 1)], number="SEED-1", days_ago=30)
    placed_old = make_order(shop.ada, [(shop.novel, 1), (shop.kettle, 1)], number="W-OLD", days_ago=0.01)
    Confirmation.objects.create(
        order=placed_old, task_id="t-1", delivery_days=2, connection_held_during_call=False
    )
    placed_now = make_order(shop.alan, [(shop.atlas, 1)], number="W-NEW", days_ago=0)
    monitor = soak.Monitor(TheTestDatabase())
    trim = soak.OrderTrim(after_id=seeded.pk, keep_seconds=120)
    try:
        trim(monitor)
        trim(monitor)  # nothing more is that old
    finally:
        monitor.close()

    assert trim.deleted == 1  # W-OLD, 14 minutes old; the seeded one stays however old
    assert sorted(Order.objects.values_list("number", flat=True)) == ["SEED-1", "W-NEW"]
    assert OrderLine.objects.filter(order=placed_old.pk).count() == 0
    assert not Confirmation.objects.exists()
    assert placed_now.lines.count() == 1


def test_a_restart_outside_the_run_is_refused(capsys):
    with pytest.raises(SystemExit):
        soak.parse_args(["--minutes", "1", "--restart-at-seconds", "30", "60"])
    assert "each moment must fall inside the run" in capsys.readouterr().err


def test_the_report_is_written_with_its_table_and_chart(tmp_path):
    series = soak.Series()
    for t in range(0, 40, 5):
        series.add("rss_mb", "wsgi/1", t, 80)
        series.add("fds", "wsgi/1", t, 30)
        series.add("server_connections", "shop", t, 8)
        series.add("checked_out", "wsgi", t, 0 if t == 35 else 3)
        series.add("hold_p95_ms", "wsgi", t, None)  # no checkout in the interval: no point
        series.add("view_hold_ms", "wsgi orders:export-csv", t, 2000 + t)  # seconds beside ms: log scale
        series.add("view_hold_ms", "wsgi catalog:product-list", t, 2)
        series.add("errors_5xx", "wsgi", t, 0)
    args = soak.parse_args(["--minutes", "0.5", "--out", str(tmp_path)])
    faults = soak.Faults([{"kind": "kill", "t": 10, "at": 0.0, "terminated": 8}])
    report = soak.build_report(args, series, faults, {"wsgi": ""}, {"wsgi": []}, {"wsgi": 100}, 42)

    path = soak.write_report(report, tmp_path)
    assert report["passed"] and "hold_p95_ms" not in report["samples"]
    text = path.read_text()
    assert "| server_connections | shop | 8 | 8 | +0 | end within ± 4 of the start | pass |" in text
    assert "10 s kill (8)" in text and "![" in text
    assert "Data: orders placed deleted every minute once 120 s old, 42 in all." in text
    assert "| view_hold_ms | wsgi catalog:product-list | 2 | 2 |" in text
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["machine"]["commit"]


# A real one -----------------------------------------------------------------------------------------


def two_free_ports() -> int:
    """A port free on 127.0.0.1 whose next one is free too (the soak's two sites)."""
    for _ in range(20):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports in a row")


@pytest.mark.load_suite
def test_a_short_soak_with_a_kill_and_a_restart_reports_every_line_and_no_500(tmp_path):
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.soak", "--minutes", "0.5", "--pool", POOL, "--out", str(out),
         "--sample-seconds", "2", "--kill-every-seconds", "8", "--restart-at-seconds", "12",
         "--restart-seconds", "3", "--wsgi-users", "8", "--asgi-users", "16", "--workers", "1",
         "--keep-orders-seconds", "3", "--port", str(two_free_ports())],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode in (0, 1), output[-3000:]  # 1: a verdict failed, which the report says

    report = json.loads((out / "report.json").read_text())
    assert {key for key, _, _ in soak.LINES} <= report["samples"].keys(), output[-3000:]
    for line, subjects in report["samples"].items():
        assert subjects and all(subjects.values()), line
    assert {"wsgi", "asgi"} <= report["samples"]["checked_out"].keys()
    assert [f["kind"] for f in report["faults"]].count("restart") == 1
    assert [f["kind"] for f in report["faults"]].count("kill") >= 2
    assert report["errors"]["500"]["count"] == 0, report["errors"]["500"]
    assert report["errors"]["500"]["logged"] == []
    assert report["requests"]["wsgi"] > 100 and report["requests"]["asgi"] > 100
    assert report["orders_deleted"] > 0  # the orders placed, once 3 s old
    assert (out / "report.md").read_text().startswith("# Soak: release on " + POOL)
    assert (out / "soak.png").exists()
    assert "minute 0." in output and "report:" in output
