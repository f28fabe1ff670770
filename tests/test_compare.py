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


def seeded_stock() -> dict[str, int]:
    """Each seeded product's stock as the seed makes it."""
    from apps.storefront.seeding import product_rows

    return {row.sku: row.stock for row in product_rows(50, [0])}


def test_a_short_run_writes_the_reports_with_the_result_first(tmp_path):
    from apps.catalog.models import Product
    from apps.orders.models import Order

    port = free_port()
    # Six seconds: long enough for one of the runner's five-second CPU readings.
    result = compare(
        tmp_path, "--scenarios", "raw", "--duration", "6", "--users", "4", "--threads", "4",
        "--pool-size", "1", "--external-latency-ms", "20", "--overhead-rounds", "2", "--port", str(port),
        "--seed", "small",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    sides = report["scenarios"]["raw"]
    with_pgbouncer = shutil.which("pgbouncer") is not None
    names = ["baseline", "release", "ceiling"] + (["pgbouncer"] if with_pgbouncer else [])
    for side in names:
        assert sides[side].keys() >= METRIC_KEYS
        assert sides[side]["rps"] > 0
        assert sides[side]["failures"] == 0
    assert sides["ceiling"]["pool_size"] == 4 and sides["release"]["pool_size"] == 1  # as many as threads
    assert sides["release_of_ceiling"] == pytest.approx(sides["release"]["rps"] / sides["ceiling"]["rps"])
    assert sides["release"]["hold_mean_ms"] < sides["baseline"]["hold_mean_ms"]
    assert report["config"]["latency_ceiling_rps"] == 4 * 1000 / 20
    for side in ("baseline", "release"):
        # One request on the idle server takes the external call and a little more.
        assert sides[side]["unloaded_latency_ms"] > 20
        assert sides[side]["thread_bound_rps"] == pytest.approx(4 * 1000 / sides[side]["unloaded_latency_ms"])
        # Read from the gunicorn worker's own CPU time: per request, and every five seconds.
        assert sides[side]["worker_cpu_ms_per_request"] > 0
        assert 0 < sides[side]["worker_busy_percent"] < 100 * os.cpu_count()
    # Alone on the server, baseline holds its connection through the 20 ms call; release does not.
    assert sides["baseline"]["unloaded_hold_mean_ms"] > 20
    assert 0 < sides["release"]["unloaded_hold_mean_ms"] < 20
    if with_pgbouncer:
        assert sides["pgbouncer"]["server_connections"] == 1  # as many as release's pool
        assert sides["pgbouncer"]["pool_size"] == 4
    else:
        assert "PgBouncer side was skipped" in result.stdout
    overhead = report["overhead"]["native"]
    assert "engine_overhead_spread_us" in overhead and overhead["rounds"] == 2
    # Two rounds say nothing of the per-query cost: one line says how to measure it instead.
    assert "2 rounds are too few" in result.stdout and "`make overhead`" in result.stdout
    assert sorted(s["ran"] for s in map(sides.get, names)) == list(range(1, len(names) + 1))

    # The plan first, numbered sides, then one table at the end.
    assert result.stdout.index("plan: 1 scenario(s)") < result.stdout.index(f"side 1/{len(names)} raw/")
    assert re.search(r"hold [\d.]+ ms per checkout, wait [\d.]+ ms", result.stdout)
    end = result.stdout[result.stdout.index("raw: release with 1 connections served") :]
    assert sum(line.startswith("|---") for line in end.splitlines()) == 1  # one table, the summary
    assert "release / ceiling" in end and "report.html" in end
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.index("release / ceiling") < markdown.index("### raw")  # the summary before details
    for row in ("| hold per checkout on the idle server", "| worker CPU per request", "| worker CPU busy"):
        assert row in markdown
    assert "Per-query cost of release (one thread)" not in markdown and "`make overhead`" in markdown
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.index('class="headline"') < page.index("<img") < page.index("<h2>")
    assert "`" not in page  # no Markdown in the HTML
    assert 'href="locust/raw-release.html"' in page
    for name in ("report.md", "throughput.png", "latency.png", "hold.png", "locust/raw-release.html"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert gunicorns_started_by(os.getpid()) == [], "the runner stopped the sites it started"

    # The shop is left as the seed made it: the run's orders gone, the stock as seeded.
    assert not Order.objects.exclude(number__startswith="S-").exists()
    assert dict(Product.objects.values_list("sku", "stock")) == seeded_stock()


def test_a_pool_size_sweep_reports_the_connections_each_engine_needs(tmp_path):
    result = compare(
        tmp_path, "--scenarios", "raw", "--duration", "3", "--users", "8", "--threads", "4",
        "--pool-sizes", "4,1", "--pool-size", "1", "--external-latency-ms", "20", "--overhead-rounds", "0",
        "--port", str(free_port()), "--seed", "small",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    sweep = report["sweep"]["raw"]
    assert sweep.keys() == {"baseline", "release"}
    for side in sweep.values():
        assert side.keys() == {"1", "4"}
        assert all(figures.keys() >= METRIC_KEYS and figures["rps"] > 0 for figures in side.values())
    needed = report["connections_needed"]["raw"]
    best = max(figures["rps"] for side in sweep.values() for figures in side.values())
    for name, size in needed.items():
        reaching = [int(s) for s, figures in sweep[name].items() if figures["rps"] >= 0.95 * best]
        assert size == (min(reaching) if reaching else None)
    # Stock with a pool as large as its threads is in the sweep: it is the ceiling.
    assert report["scenarios"]["raw"]["ceiling"] == sweep["baseline"]["4"]
    assert report["scenarios"]["raw"]["release"] == sweep["release"]["1"]  # --pool-size 1
    assert "side 4/4 raw/" in result.stdout and "(pool 1)" in result.stdout
    assert "connections needed" in result.stdout
    assert (tmp_path / "report" / "sweep.png").stat().st_size > 0
    # connection_report's prediction, from stock with every connection, beside the sweep's answer.
    check = report["prediction"]["raw"]
    ceiling = report["scenarios"]["raw"]["ceiling"]
    assert check["predicted_pool"] == ceiling["predicted_pool"] >= 1
    assert 0 < check["connections_with_release"] < check["connections_now"]
    assert check["release_needs"] == needed["release"]
    assert "predicted pool" in result.stdout


def test_a_comparison_against_sites_already_running(tmp_path, serve):
    """--target: the sites are someone else's; nothing is started, the database left alone."""
    from django.core.management import call_command

    call_command("seed", size="small", verbosity=0)
    # Pools of 3, not the runner's default of 4: the report must give what each site says it has,
    # and a site that has served nothing yet says it too.
    sites = {
        "baseline": serve(workers=1, env={"DB_RELEASE": "request", "EXTERNAL_LATENCY_MS": "20",
                                          "DB_POOL_MAX_SIZE": "3"}),
        "release": serve(workers=1, env={"DB_RELEASE": "cursor", "EXTERNAL_LATENCY_MS": "20",
                                         "DB_POOL_MAX_SIZE": "3"}),
    }  # fmt: skip
    before = {p.pid for p in gunicorns_started_by(os.getpid())}
    result = compare(
        tmp_path, "--scenarios", "raw", "--duration", "3", "--users", "4", "--threads", "4",
        "--external-latency-ms", "20",
        *[f"--target={side}={site.base}" for side, site in sites.items()],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert {p.pid for p in gunicorns_started_by(os.getpid())} == before  # none started, none stopped
    assert "preparing the database" not in result.stdout + result.stderr
    assert "per-query overhead" not in result.stdout  # that needs the database
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    sides = report["scenarios"]["raw"]
    assert sides.keys() == {"baseline", "release"}
    for name, site in sites.items():
        assert sides[name]["url"] == site.base
        assert sides[name]["rps"] > 0 and sides[name]["failures"] == 0
        assert sides[name]["worker_cpu_ms_per_request"] is None  # not our process
        assert sides[name]["unloaded_hold_mean_ms"] > 0  # from the site's own /metrics
        assert sides[name]["pool_size"] == 3  # what the site says it has (DB_POOL_MAX_SIZE)
    assert sides["release"]["hold_mean_ms"] < sides["baseline"]["hold_mean_ms"]
    assert any("this run started none of them" in note for note in report["notes"])
    assert "worker" in (tmp_path / "report" / "report.md").read_text().split("### raw")[0]


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


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_counts_of_an_order_on_each_engine_leave_the_shop_as_found():
    from apps.catalog.models import Product
    from apps.orders.models import Order

    result = subprocess.run(
        [sys.executable, "-m", "loadtests.instructions", "--checkouts", "5", "--order"],
        cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    per_order = {
        name: int(count.replace(",", ""))
        for name, count in re.findall(
            r"one order and the end of its request, (.+?): ([\d,]+) instructions", result.stdout
        )
    }
    assert per_order.keys() == {"stock Django", "release"}, result.stdout
    # An order is a transaction of six statements: far more than one checkout.
    assert min(per_order.values()) > 100_000, per_order
    assert re.search(r"release against stock Django per order: [+-]\d+\.\d\d%", result.stdout), result.stdout
    assert not Order.objects.exclude(number__startswith="S-").exists()
    assert dict(Product.objects.values_list("sku", "stock")) == seeded_stock()


def test_the_side_that_runs_first_alternates_from_one_scenario_to_the_next():
    from loadtests.arguments import parse_args
    from loadtests.compare import plan

    runs = plan(parse_args(["--scenarios", "raw,orm,atomic", "--no-pgbouncer"]))
    order = [(run.scenario, run.side.name, run.position) for run in runs]
    assert order[:3] == [("raw", "baseline", 1), ("raw", "release", 2), ("raw", "ceiling", 3)]
    assert order[3:6] == [("orm", "ceiling", 1), ("orm", "release", 2), ("orm", "baseline", 3)]
    assert [(side, position) for scenario, side, position in order[6:]] == [(s, p) for _, s, p in order[:3]]


def test_a_sweep_runs_both_engines_at_each_size_and_the_ceiling_when_no_size_reaches_the_threads():
    from loadtests.arguments import parse_args
    from loadtests.compare import plan

    runs = plan(parse_args(["--scenarios", "raw", "--pool-sizes", "2,1", "--threads", "8"]))
    assert [(run.side.name, run.side.pool_size) for run in runs] == [
        ("baseline", 1), ("release", 1), ("release", 2), ("baseline", 2), ("ceiling", 8),
    ]  # fmt: skip
    assert [run.files for run in runs][:2] == ["raw-baseline-pool1", "raw-release-pool1"]
    runs = plan(parse_args(["--scenarios", "raw", "--pool-sizes", "2,8", "--threads", "8", "--rounds", "2"]))
    assert "ceiling" not in {run.side.name for run in runs}  # stock at 8 is the ceiling
    assert runs[0].files == "raw-baseline-pool2-round1"


def test_under_asgi_the_ceiling_takes_what_the_server_allows_and_more_users_come():
    from loadtests.arguments import parse_args
    from loadtests.compare import plan, users_of

    args = parse_args(["--scenarios", "raw,async", "--no-pgbouncer", "--workers", "2"])
    args.connections_allowed = 90  # what compare reads from the server once it is up
    ceilings = {run.scenario: run.side.pool_size for run in plan(args) if run.side.name == "ceiling"}
    assert ceilings == {"raw": 32, "async": 45}  # threads under wsgi; max_connections shared under asgi
    assert (users_of(args, "raw"), users_of(args, "async")) == (64, 256)

    args = parse_args(["--scenarios", "raw", "--server", "asgi", "--users", "10", "--pool-sizes", "1,64"])
    args.connections_allowed = 90
    assert [(run.side.name, run.side.pool_size) for run in plan(args)][-1] == ("ceiling", 90)
    assert users_of(args, "raw") == 10
    args.connections_allowed = 60  # stock at 64 is as large as the server allows: it is the ceiling
    assert "ceiling" not in {run.side.name for run in plan(args)}


def test_tasks_run_on_workers_this_run_starts_even_beside_running_sites():
    from loadtests.arguments import parse_args
    from loadtests.compare import describe_plan, plan, users_of

    argv = ["--scenarios", "raw,tasks", "--target", "release=http://127.0.0.1:1"]
    args = parse_args([*argv, "--target", "baseline=http://127.0.0.1:2", "--tasks", "50", "--threads", "8"])
    args.connections_allowed = 0
    by_scenario: dict[str, list] = {}
    for run in plan(args):
        by_scenario.setdefault(run.scenario, []).append((run.side.name, run.side.release, run.side.pool_size))
    assert sorted(by_scenario["raw"]) == [("baseline", "", 0), ("release", "", 0)]  # the running sites
    assert sorted(by_scenario["tasks"]) == [
        ("baseline", "request", 4), ("ceiling", "request", 8), ("release", "cursor", 4),
    ]  # fmt: skip
    assert users_of(args, "tasks") is None
    assert "tasks (worker of 8 threads, 50 tasks of 200 ms)" in describe_plan(args, plan(args))


@pytest.mark.load_suite
def test_the_async_scenario_runs_under_asgi_and_each_side_says_so(tmp_path):
    result = compare(
        tmp_path, "--scenarios", "async", "--duration", "4", "--users", "16", "--pool-size", "1",
        "--external-latency-ms", "20", "--overhead-rounds", "0", "--no-pgbouncer", "--port", str(free_port()),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "async (asgi, 16 users)" in result.stdout
    assert "uvicorn worker" in result.stdout

    sides = json.loads((tmp_path / "report" / "report.json").read_text())["scenarios"]["async"]
    for name in ("baseline", "release", "ceiling"):
        assert sides[name].keys() >= METRIC_KEYS
        assert sides[name]["server"] == "asgi" and sides[name]["users"] == 16
        assert sides[name]["failures"] == 0
        assert sides[name]["thread_bound_rps"] is None  # no thread count bounds an ASGI server
    assert sides["ceiling"]["pool_size"] > 4  # more than the runner's threads: the server's room
    # Stock holds the first read's connection through the awaited call and the second read.
    assert sides["baseline"]["unloaded_hold_mean_ms"] > 20 > sides["release"]["unloaded_hold_mean_ms"]
    assert sides["release"]["checkouts_per_request"] == pytest.approx(2, abs=0.1)
    assert "async" in (tmp_path / "report" / "report.md").read_text()


def test_connections_needed_is_the_smallest_pool_reaching_95_percent_of_the_best():
    from loadtests.compare import connections_needed

    sweep = {
        "baseline": {"1": {"rps": 20.0}, "2": {"rps": 40.0}, "32": {"rps": 500.0}},
        "release": {"1": {"rps": 300.0}, "2": {"rps": 480.0}, "32": {"rps": 490.0}},
    }
    assert connections_needed(sweep, None) == {"baseline": 32, "release": 2}
    assert connections_needed(sweep, {"rps": 1000.0}) == {"baseline": None, "release": None}


@pytest.mark.parametrize(
    ("predicted", "needed", "agrees"),
    [(2, 2, True), (3, 2, True), (4, 2, False), (6, 4, True), (7, 4, False), (2.5, 4, True), (1, None, None)],
)
def test_a_predicted_pool_agrees_within_one_connection_or_half(predicted, needed, agrees):
    from loadtests.compare import prediction_check

    stock = {"predicted_pool": predicted, "predicted_connections_now": 9}
    stock["predicted_connections_with_release"] = 1
    assert prediction_check(stock, needed)["agrees"] is agrees


def test_the_commit_comes_from_the_environment_or_a_file_without_git(tmp_path, monkeypatch):
    from loadtests import machine

    monkeypatch.setenv("GIT_COMMIT", "abc1234")
    assert machine.commit() == "abc1234"
    monkeypatch.delenv("GIT_COMMIT")
    monkeypatch.setattr(machine, "COMMIT_FILE", tmp_path / "COMMIT")
    (tmp_path / "COMMIT").write_text("def5678\n")
    assert machine.commit() == "def5678"
    (tmp_path / "COMMIT").unlink()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert machine.commit() == "unknown"
    assert machine.machine()["commit"] == "unknown"


def test_targets_are_checked_before_anything_starts():
    from loadtests.arguments import parse_args

    def refused(*argv: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "loadtests.compare", *argv], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 2
        return result.stderr

    assert "at least release=URL and baseline=URL" in refused("--target", "release=http://127.0.0.1:1")
    assert "one of baseline, release, ceiling, pgbouncer" in refused("--target", "turbo=http://127.0.0.1:1")
    assert "only to 127.0.0.0/8" in refused(
        "--target", "release=http://192.0.2.1:8000", "--target", "baseline=http://127.0.0.1:1"
    )
    assert "cannot resize" in refused(
        "--target",
        "release=http://127.0.0.1:1",
        "--target",
        "baseline=http://127.0.0.1:2",
        "--pool-sizes",
        "1,2",
    )
    args = parse_args(
        ["--target", "release=http://localhost:8000/", "--target", "baseline=http://127.0.0.1:8001"]
    )
    assert args.targets == {"release": "http://localhost:8000", "baseline": "http://127.0.0.1:8001"}


def per_query_figures(rounds: int = 20, **figures: float) -> dict:
    """One pool's figures as loadtests.overhead.as_json() gives them: one noisy of seven by default."""
    return {
        "per_query_us": {"baseline": 400.0, "release": 430.0}, "rounds": rounds,
        "overhead_us": 30.0, "overhead_spread_us": 8.0,
        "cpu_overhead_us": 25.0, "cpu_overhead_spread_us": 40.0,
        "engine_overhead_us": 254.0, "engine_overhead_spread_us": 100.0,
        "engine_cpu_overhead_us": 20.0, "engine_cpu_overhead_spread_us": 5.0,
        "overhead_with_ping_us": 150.0, "overhead_with_ping_spread_us": 10.0,
        "pool_library_us": 200.0, "pool_library_spread_us": 100.0,
        "pool_library_cpu_us": 10.0, "pool_library_cpu_spread_us": 2.0,
        **figures,
    }  # fmt: skip


def test_per_query_figures_say_noisy_where_the_rounds_disagree():
    from loadtests.report import overhead_rows

    figures = per_query_figures(pool_library_us=294.0)
    row = overhead_rows({"native": figures})[0]
    assert row[3] == "+30.0 µs (IQR 8.0)"
    assert row[4] == "noisy (IQR 40 µs)"  # the spread is larger than the figure
    assert row[5].startswith("noisy") and row[8].startswith("noisy")  # the floor above the engine
    assert row[6] == "+20.0 µs (IQR 5.0)" and row[9] == "+10.0 µs (IQR 2.0)"


def a_report(overhead: dict | None) -> dict:
    """The results of a one-scenario run, with `overhead` as its per-query cost where given."""
    results = {
        "config": {
            "pool": "native", "workers": 1, "threads": 32, "pool_size": 4, "users": 64, "duration": 30,
            "external_latency_ms": 50, "latency_ceiling_rps": 640, "rounds": 1,
            "machine": {"cpu": "test", "cores": 2, "python": "3", "django": "5", "commit": "abc"},
        },
        "scenarios": {"raw": {"baseline": a_run(100.0, ran=1), "release": a_run(400.0, ran=2)}},
    }  # fmt: skip
    if overhead is not None:
        results["overhead"] = overhead
    return results


def test_a_per_query_cost_that_says_nothing_is_left_out_of_the_report_for_a_line_on_measuring_it(tmp_path):
    from loadtests import report

    # Four noisy figures of seven: the spread above the figure.
    noisy = per_query_figures(
        overhead_spread_us=200.0, overhead_with_ping_spread_us=200.0, engine_cpu_overhead_spread_us=50.0
    )
    results = a_report({"native": noisy})
    report.write(results, tmp_path)
    line = "its 20 rounds here disagreed by more than the cost itself; measure it alone with `make overhead`"
    printed = report.summary_markdown(results)
    assert line in printed
    markdown = (tmp_path / "report.md").read_text()
    assert line in markdown and "Per-query cost of release (one thread)" not in markdown
    assert "noisy" not in markdown
    page = (tmp_path / "report.html").read_text()
    assert "<code>make overhead</code>" in page and "noisy" not in page and "`" not in page
    # The figures stay in report.json, keys as they were, for the tools that read them.
    assert json.loads((tmp_path / "report.json").read_text())["overhead"] == results["overhead"]

    # Too few rounds say nothing either, whatever their figures.
    few = report.summary_markdown(a_report({"native": per_query_figures(rounds=3)}))
    assert "3 rounds are too few to tell it from noise" in few
    # Not measured (--overhead-rounds 0): nothing to say.
    assert "Per-query cost" not in report.summary_markdown(a_report(None))


def test_a_per_query_cost_measured_clearly_is_in_the_report():
    from loadtests import report

    results = a_report({"native": per_query_figures()})  # one noisy figure of seven, 20 rounds
    markdown = report.markdown(results)
    assert "### Per-query cost of release (one thread)" in markdown
    assert "| native | 400.0 | 430.0 | +30.0 µs (IQR 8.0) | noisy (IQR 40 µs) |" in markdown
    assert "make overhead" not in markdown
    assert "<h2>Per-query cost of release (one thread)</h2>" in report.html_page(results, [])


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
    text = report.markdown(results) + report.config_text(results)
    assert "Each side ran 2 times" in text
    assert "Per round, release ÷ baseline: ×4.00, ×6.00." in text
    assert "Release serves 350.0 req/s" in text and "baseline 75.0 req/s: ×4.67." in text
    assert "ran first" not in text


def test_rounds_below_one_are_refused():
    from loadtests.compare import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])


def test_a_report_written_mid_sweep_leaves_out_what_has_not_run(tmp_path):
    from loadtests import report
    from loadtests.arguments import parse_args
    from loadtests.compare import fold, plan

    args = parse_args(
        ["--scenarios", "raw,orm", "--pool-sizes", "1,2", "--threads", "2", "--out", str(tmp_path)]
    )
    runs = plan(args)
    done = {run: {**a_run(10.0 * run.side.pool_size), "pool_size": run.side.pool_size} for run in runs[:3]}
    machine = {"cpu": "test", "cores": 2, "python": "3", "django": "5", "commit": "abc"}
    config = {**vars(args), "latency_ceiling_rps": 40.0, "out": str(tmp_path), "machine": machine}
    results = {"config": config, "notes": [], **fold(args, runs, done)}
    assert list(results["sweep"]) == ["raw"]  # orm has not started
    report.write(results, tmp_path)
    assert (tmp_path / "sweep.png").stat().st_size > 0
