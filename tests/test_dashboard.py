"""/pool/: this site's pool beside another's (DASHBOARD_PEER_URL), with axes and a recent window."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from apps.dashboard import charts, history
from apps.dashboard.snapshot import Distribution, Snapshot
from tests.servers import ROOT, database_url_for_tests, free_port, get


def snapshot(checkouts: float, hold_counts: list[float], at: float = 0.0, **optional: float) -> Snapshot:
    bounds = [0.001, 0.01, 0.1, float("inf")]
    hold = Distribution(
        bounds=bounds, counts=hold_counts, total=sum(hold_counts), sum=0.01 * sum(hold_counts)
    )
    empty = Distribution(bounds=bounds, counts=[0.0] * 4)
    return Snapshot(
        taken_at=at, engines=["release"], pools=["native"], checked_out=1, idle=3, max_size=4,
        checkouts=checkouts, timeouts=0, ended_holding=0, hold=hold, wait=empty,
        request_hold=empty, request_checkouts=empty, optional=optional,
    )  # fmt: skip


def test_the_recent_window_counts_only_what_happened_since_the_earlier_reading():
    earlier = snapshot(100, [50, 40, 10, 0], at=0, retries=2)
    now = snapshot(130, [60, 55, 15, 0], at=30, retries=3)
    recent = now.since(earlier)
    assert recent.checkouts == 30
    assert recent.hold.counts == [10, 15, 5, 0]
    assert recent.hold.total == 30
    assert recent.optional == {"retries": 1}
    assert recent.checked_out == now.checked_out  # a gauge is what it is now


def test_the_views_are_ranked_by_the_connections_they_hold_idle():
    from dataclasses import replace

    from apps.dashboard.views import _views
    from apps.metrics.prediction import ViewTotals

    earlier = replace(snapshot(0, [0, 0, 0, 0]), views={"catalog:detail": ViewTotals(10, 1.0, 0.1, 0.1)})
    now = replace(
        snapshot(50, [50, 0, 0, 0], at=10),
        views={
            "catalog:detail": ViewTotals(110, 6.0, 0.6, 0.6),  # 100 requests holding 50 ms, 45 idle
            "orders:new": ViewTotals(20, 2.0, 0.5, 2.0),  # a transaction: nothing idle
            "api-raw-leaky": ViewTotals(5, 3.0, 0.1, 0.2),
        },
    )
    rows = _views(now.since(earlier), seconds=10)
    assert [row["view"] for row in rows] == ["catalog:detail", "api-raw-leaky", "orders:new"]
    detail = rows[0]
    assert detail["requests_per_second"] == 10
    assert detail["held"] == pytest.approx(0.5) and detail["idle"] == pytest.approx(0.45)
    assert detail["idle_share"] == pytest.approx(0.9)
    assert _views(now, seconds=None) == []  # no window yet: no rates


def test_the_pool_size_says_how_the_workers_share_it():
    from dataclasses import replace

    from apps.dashboard.views import _pool_size

    site = replace(snapshot(0, [0, 0, 0, 0]), max_size=8)
    assert _pool_size(site, per_worker=4) == "8 (2 workers × 4)"
    assert _pool_size(site, per_worker=8) == "8"
    assert _pool_size(site, per_worker=None) == "8"


def test_a_restarted_server_shows_everything_since_its_start():
    assert snapshot(20, [20, 0, 0, 0]).since(snapshot(100, [100, 0, 0, 0])).checkouts == 20


def test_the_window_starts_at_the_latest_reading_old_enough():
    readings = [
        history.Reading(at=t, here=snapshot(t, [t, 0, 0, 0], at=t), peer=None) for t in range(0, 50, 5)
    ]
    assert history.reading_before(readings, now=50, seconds=30).at == 20
    assert history.reading_before(readings, now=20, seconds=30) is None  # not running long enough yet


def test_histogram_has_a_count_axis_from_zero_past_the_tallest_bar():
    chart = charts.histogram(
        Distribution(bounds=[0.001, 0.01, float("inf")], counts=[3, 1234, 0], total=1237)
    )
    labels = [tick.label for tick in chart.ticks]
    assert labels[0] == "0"
    assert float(labels[-1].rstrip("k")) * (1000 if labels[-1].endswith("k") else 1) >= 1234
    tallest = max(chart.bars, key=lambda bar: bar.count)
    assert tallest.count_label == "1234" and tallest.y >= chart.ticks[-1].position  # under the top tick
    assert [bar.label for bar in chart.bars] == ["≤1ms", "≤10ms", "more"]
    assert chart.bars[2].count_label == ""  # an empty bucket is not labelled


def test_nothing_is_drawn_for_an_empty_histogram():
    assert charts.histogram(Distribution(bounds=[0.001], counts=[0])) is None


def test_trend_has_a_time_axis_to_now_and_a_scale_above_every_pool():
    chart = charts.trend(
        [("release", "here", [(120, 0), (60, 3), (0, 4)], 4), ("baseline", "peer", [], 6)], 120
    )
    assert [t.label for t in chart.x_ticks] == ["−120 s", "−90 s", "−60 s", "−30 s", "now"]
    assert chart.x_ticks[0].position == chart.left and chart.x_ticks[-1].position == chart.right
    assert float(chart.y_ticks[-1].label) >= 6
    assert chart.series[0].points.endswith(f"{chart.right:.1f},{chart.series[0].limit_y:.1f}")  # 4 of 4, now


def _side_titles(html: str) -> list[str]:
    return [
        re.sub(r"\s+", " ", title).strip()
        for title in re.findall(r'<h2><span class="swatch"></span>(.*?)<span', html)
    ]


@pytest.mark.django_db(transaction=True)
def test_each_site_shows_its_pool_beside_the_other_under_real_servers(serve):
    baseline = serve(workers=1, env={"DB_RELEASE": "request"})
    release = serve(workers=1, env={"DB_RELEASE": "cursor", "DASHBOARD_PEER_URL": baseline.base})
    for _ in range(5):
        assert get(f"{baseline.base}/api/raw/reports/sales/")[0] == 200
    for _ in range(3):
        assert get(f"{release.base}/api/raw/reports/sales/")[0] == 200

    # A request is counted as it ends, which can be just after its client has the answer.
    deadline = time.monotonic() + 10
    while True:
        status, page = get(f"{release.base}/pool/")
        assert status == 200
        # Each chart row has a cell per side: this site's, then the other's.
        row = page.split('Checkouts per request <span class="note">')[1]
        counts = [int(n) for n in re.findall(r"since start: (\d+) observed", row)]
        if counts == [3, 5] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _side_titles(page) == ["this site: release", f"{baseline.base}: baseline"]
    assert counts == [3, 5]  # each side counted what its own server did
    assert 'class="chart side-peer"' in row and "<rect" in row.split("side-peer")[1]
    # The trend has both sites, a time axis and a scale.
    assert 'polyline class="here"' in page and 'polyline class="peer"' in page
    assert ">now</text>" in page and ">−120 s</text>" in page and ">connections</text>" in page
    # The live part is served alone for the refresh, with the same two sides.
    status, panel = get(f"{release.base}/pool/panel/")
    assert status == 200 and "<html" not in panel
    assert _side_titles(panel) == _side_titles(page)


@pytest.mark.django_db(transaction=True)
def test_a_peer_that_does_not_answer_is_named_and_this_site_still_shows(serve):
    nowhere = f"http://127.0.0.1:{free_port()}"
    site = serve(workers=1, env={"DASHBOARD_PEER_URL": nowhere})
    status, page = get(f"{site.base}/pool/")
    assert status == 200
    assert f"Could not read the other site: {nowhere}/metrics" in page
    assert len(_side_titles(page)) == 1


@pytest.mark.django_db(transaction=True)
def test_make_run_ab_serves_both_engines_each_showing_the_other(tmp_path):
    port = free_port()
    while not all(_port_is_free(p) for p in (port, port + 1)):
        port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "GUNICORN_WORKERS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each site makes its own, named by its address
    command = [sys.executable, "-m", "devtools.serve_ab", "--port", str(port), "--seed", "none"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        release, baseline = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        _wait_for(f"{release}/readyz", process)
        _wait_for(f"{baseline}/readyz", process)
        assert '"engine": "release"' in get(f"{release}/readyz")[1]
        assert '"engine": "baseline"' in get(f"{baseline}/readyz")[1]
        assert _side_titles(get(f"{release}/pool/")[1]) == ["this site: release", f"{baseline}: baseline"]
        assert _side_titles(get(f"{baseline}/pool/")[1]) == ["this site: baseline", f"{release}: release"]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output[-2000:]
    assert f"look at {release}/pool/" in output


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")
