"""The A/B comparison runner, end to end on the test database (a short, small run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import psutil
import pytest

from tests.conftest import POOL
from tests.servers import ROOT, database_url_for_tests, free_port

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(POOL != "native", reason="the runner picks its pool itself (--pool); run once"),
]

METRIC_KEYS = {
    "rps", "failures", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "hold_mean_ms",
    "hold_p95_ms", "wait_mean_ms", "wait_p95_ms", "checkouts_per_request", "pool_timeouts",
    "max_checked_out",
}  # fmt: skip


def tool_env() -> dict[str, str]:
    """The environment a load-test tool runs in: the test database, its own settings."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["DATABASE_URL"] = database_url_for_tests()
    return env


def compare(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.compare", "--out", str(tmp_path / "report"), *args],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def gunicorns_started_by(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "gunicorn" in " ".join(p.info["cmdline"] or [])
            and str(ROOT) in " ".join(p.info["cmdline"] or []) and p.pid != pid]  # fmt: skip


def test_a_short_run_writes_the_three_reports_and_prints_the_table(tmp_path):
    port = free_port()
    # Six seconds: long enough for one of the runner's five-second CPU readings.
    result = compare(
        tmp_path, "--scenarios", "raw", "--duration", "6", "--users", "4", "--threads", "4",
        "--external-latency-ms", "20", "--overhead-rounds", "1", "--port", str(port), "--seed", "small",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    sides = report["scenarios"]["raw"]
    for side in ("baseline", "release"):
        assert sides[side].keys() >= METRIC_KEYS
        assert sides[side]["rps"] > 0
        assert sides[side]["failures"] == 0
    assert sides["release"]["hold_mean_ms"] < sides["baseline"]["hold_mean_ms"]
    assert report["config"]["latency_ceiling_rps"] == 4 * 1000 / 20
    for side in ("baseline", "release"):
        # One request on the idle server takes the external call and a little more.
        assert sides[side]["unloaded_latency_ms"] > 20
        assert sides[side]["thread_bound_rps"] == pytest.approx(4 * 1000 / sides[side]["unloaded_latency_ms"])
    # Alone on the server, baseline holds its connection through the 20 ms call; release does not.
    assert sides["baseline"]["unloaded_hold_mean_ms"] > 20
    assert 0 < sides["release"]["unloaded_hold_mean_ms"] < 20
    for side in ("baseline", "release"):
        # Read from the gunicorn worker's own CPU time: per request, and every five seconds.
        assert sides[side]["worker_cpu_ms_per_request"] > 0
        assert 0 < sides[side]["worker_busy_percent"] < 100 * os.cpu_count()
    assert "native" in report["overhead"]
    assert {sides["baseline"]["ran"], sides["release"]["ran"]} == {1, 2}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "side ran first." in markdown
    for row in ("| hold per checkout on the idle server", "| worker CPU per request", "| worker CPU busy"):
        assert row in markdown
    for name in ("report.md", "report.html", "throughput.png", "latency.png", "hold.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert "| throughput (req/s) |" in result.stdout
    assert "report written to" in result.stdout
    assert gunicorns_started_by(os.getpid()) == [], "the runner stopped the sites it started"


def test_a_taken_port_is_reported_and_nothing_is_left_running(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = compare(tmp_path, "--scenarios", "raw", "--duration", "2", "--port", str(port),
                         "--seed", "none", "--overhead-rounds", "0")  # fmt: skip
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr
    assert gunicorns_started_by(os.getpid()) == []


def test_the_overhead_benchmark_prints_json_alone_with_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.overhead", "--json", "--rounds", "2", "--queries", "3",
         "--pools", "native"],
        cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    native = json.loads(result.stdout)["native"]
    from loadtests.overhead import VARIANTS

    assert set(native["per_query_us"]) == set(VARIANTS)
    assert all(value > 0 for value in native["per_query_us"].values())
    assert {"engine_overhead_us", "pool_library_us", "pool_library_cpu_us"} <= native.keys()


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_put_the_engine_above_the_bare_pool():
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.instructions", "--checkouts", "50"],
        cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {
        name: int(count.replace(",", ""))
        for name, count in re.findall(r"native, (.+?): ([\d,]+) instructions", result.stdout)
    }
    assert counts.keys() == {"engine", "pool library alone"}, result.stdout
    # The engine borrows from that same library, and does more around it.
    assert counts["engine"] > counts["pool library alone"] > 1000


def test_the_side_that_runs_first_alternates_from_one_scenario_to_the_next():
    from loadtests.compare import side_order

    assert side_order(0) == ["baseline", "release"]
    assert side_order(1) == ["release", "baseline"]
    assert side_order(2) == side_order(0)


def test_bad_options_are_refused_with_the_choices():
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.compare", "--scenarios", "raw,turbo"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown scenario(s) turbo" in result.stderr


def test_worker_cpu_counts_a_worker_that_has_exited(tmp_path):
    """gunicorn may replace a worker mid-run; what the old one used must not vanish from the sum."""
    from loadtests.site import Site, SiteConfig, cpu_used

    site = Site(SiteConfig("cursor", "native", 1, 1, 1, 0), free_port(), tmp_path)
    assert site.worker_cpu_seconds() is None  # not started
    # A stand-in master: one child burns 0.3 s of CPU and exits, and the master reaps it.
    master = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    start = time.process_time()\n"
        "    while time.process_time() - start < 0.3: pass\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print('reaped', flush=True)\n"
        "time.sleep(60)\n"
    )
    site.process = subprocess.Popen([sys.executable, "-c", master], stdout=subprocess.PIPE, text=True)
    try:
        assert site.process.stdout.readline().strip() == "reaped"
        assert site.worker_cpu_seconds() >= 0.25
    finally:
        site.process.kill()
        site.process.wait()
    assert cpu_used(1.0, 3.5) == 2.5
    assert cpu_used(None, 3.5) is None
    assert cpu_used(3.5, 1.0) is None  # a reading lost to a race: no figure rather than a wrong one


def a_run(rps: float, **figures) -> dict:
    """One side's figures from one round, as compare.one_side returns them (the ones that matter here)."""
    return {
        "rps": rps, "failures": 0, "pool_timeouts": 0, "max_checked_out": 4, "hold_mean_ms": 1.0,
        "worker_busy_percent": None, "hold_distribution": [[0.001, 10.0], [float("inf"), 0.0]], "ran": 1,
        **figures,
    }  # fmt: skip


def test_rounds_fold_into_medians_with_every_failure_and_timeout_kept():
    from loadtests.rounds import combine

    runs = [
        a_run(100.0, hold_mean_ms=1.0, failures=2, max_checked_out=3, ran=1),
        a_run(300.0, hold_mean_ms=9.0, pool_timeouts=1, ran=2),
        a_run(110.0, hold_mean_ms=2.0, hold_distribution=[[0.001, 5.0], [0.01, 1.0]], ran=1),
    ]
    side = combine(runs)
    assert side["rps"] == 110.0  # the median: one fast spell does not carry the figure
    assert side["hold_mean_ms"] == 2.0
    assert side["failures"] == 2 and side["pool_timeouts"] == 1  # added up, never a median of zeros
    assert side["max_checked_out"] == 4
    assert side["worker_busy_percent"] is None  # no round had a reading
    assert side["ran"] is None  # each side went first in some round
    assert side["hold_distribution"] == [[0.001, 25.0], [0.01, 1.0], [float("inf"), 0.0]]
    assert [r["rps"] for r in side["rounds"]] == [100.0, 300.0, 110.0]
    assert combine([runs[0]]) is runs[0]  # one round is reported as it ran


def test_a_report_of_several_rounds_says_so_and_gives_each_rounds_ratio():
    from loadtests import report
    from loadtests.rounds import combine

    results = {
        "config": {
            "pool": "native", "workers": 1, "threads": 32, "pool_size": 4, "users": 64, "duration": 30,
            "external_latency_ms": 50, "latency_ceiling_rps": 640, "rounds": 2,
            "machine": {"cpu": "test", "cores": 2, "python": "3", "django": "5", "commit": "abc"},
        },
        "scenarios": {
            "raw": {
                "baseline": combine([a_run(100.0, ran=1), a_run(50.0, ran=2)]),
                "release": combine([a_run(400.0, ran=2), a_run(300.0, ran=1)]),
            }
        },
    }  # fmt: skip
    text = report.markdown(results)
    assert "Each side ran 2 times" in text
    assert "Per round, release ÷ baseline: ×4.00, ×6.00." in text
    assert "Release serves 350.0 req/s" in text and "baseline 75.0 req/s: ×4.67." in text
    assert "ran first" not in text


def test_rounds_below_one_are_refused():
    from loadtests.compare import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
