"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated by a real compose implementation (Debian's
docker-compose runs `config` without a daemon), and each service's command is run
here, natively, with the environment compose would give it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import POOL
from tests.servers import ROOT, database_url_for_tests, free_port, get

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def environment(service: dict, **overrides: str) -> dict:
    """The service's environment as compose would set it, pointed at the test database."""
    # `python` and `gunicorn` on PATH are this environment's, as they are the image's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {
        **os.environ,
        **_compose_defaults(service),
        "DATABASE_URL": database_url_for_tests(),
        "PATH": path,
        **overrides,
    }


def _compose_defaults(service: dict) -> dict:
    """${NAME:-default} values resolved the way compose does when NAME is unset."""
    resolved = {}
    for key, value in service.get("environment", {}).items():
        value = str(value)
        if value.startswith("${") and ":-" in value:
            name, default = value[2:-1].split(":-", 1)
            value = os.environ.get(name, default)
        resolved[key] = value
    return resolved


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
@pytest.mark.parametrize(
    "profile",
    [[], ["--profile", "pgbouncer"], ["--profile", "compare"], ["--profile", "monitoring"]],
    ids=["default", "pgbouncer", "compare", "monitoring"],
)
def test_compose_file_is_valid(profile):
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *profile, "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _differing(a: dict, b: dict) -> dict:
    """The environment variables whose values differ between two services: {name: (a, b)}."""
    env_a, env_b = a["environment"], b["environment"]
    return {
        k: (env_a.get(k), env_b.get(k)) for k in env_a.keys() | env_b.keys() if env_a.get(k) != env_b.get(k)
    }


def test_release_and_baseline_share_everything_but_the_release_point(services):
    web, baseline = services["web"], services["web-baseline"]
    assert _differing(web, baseline) == {
        "DB_RELEASE": ("cursor", "request"),
        "DASHBOARD_PEER_URL": ("http://web-baseline:8000", "http://web:8000"),  # each shows the other
    }
    assert web["image"] == baseline["image"]


def test_the_ceiling_is_stock_django_with_a_connection_per_thread(services):
    ceiling = services["web-ceiling"]["environment"]
    assert ceiling["DB_RELEASE"] == "request"
    assert ceiling["DB_POOL_MIN_SIZE"] == ceiling["GUNICORN_THREADS"]
    # As many as threads under WSGI; under ASGI (SERVER=asgi), where no thread count bounds
    # the requests in flight, CEILING_POOL_SIZE makes it as large as the server allows.
    assert ceiling["DB_POOL_MAX_SIZE"] == "${CEILING_POOL_SIZE:-" + ceiling["GUNICORN_THREADS"] + "}"
    assert set(_differing(services["web-baseline"], services["web-ceiling"])) == {
        "DB_POOL_MIN_SIZE", "DB_POOL_MAX_SIZE",
    }  # fmt: skip


def test_sites_are_reached_from_outside_only_through_nginx_on_loopback(services):
    for name, service in services.items():
        if name.startswith("web"):
            assert "ports" not in service, f"{name} must not face clients directly"
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert published, "nothing published"
    for port in published:
        assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), port
    proxies = [s for s in services.values() if str(s.get("image", "")).startswith("nginx:")]
    assert {p["ports"][0].rsplit(":", 1)[1] for p in proxies} == {"8000", "8003"}


def test_nginx_buffers_what_the_sites_send_and_receive():
    settings = (ROOT / "docker" / "nginx" / "proxy.inc").read_text()
    assert "proxy_request_buffering on;" in settings
    assert "proxy_buffering on;" in settings
    assert "client_body_timeout" in settings
    sites = (ROOT / "docker" / "nginx" / "sites.conf").read_text()
    for port, site in (("8000", "web"), ("8001", "web-baseline"), ("8002", "web-ceiling")):
        assert f"listen {port};" in sites and f"server {site}:8000;" in sites


def test_no_built_in_secret_key_and_no_open_metrics(services):
    for name, service in services.items():
        env = service.get("environment", {})
        if "DJANGO_SECRET_KEY" in env:
            assert env["DJANGO_SECRET_KEY"] == "${DJANGO_SECRET_KEY:-}", name
        assert env.get("METRICS_ALLOWED_IPS", "") != "*", name


def test_every_image_is_pinned(services):
    images = [s["image"] for s in services.values() if "image" in s]
    images.append(_dockerfile_lines("FROM")[0])
    for image in images:
        if image == "django-connection-release:local":
            continue
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), image
    assert services["db"]["image"].count(".") == 1, "postgres major.minor"


def test_sites_start_after_the_database_is_healthy_and_migrated(services):
    assert services["db"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("web", "web-baseline", "web-ceiling"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["healthcheck"]["test"]
    assert "pgdata:/var/lib/postgresql" in services["db"]["volumes"]


def test_locust_has_a_web_ui_with_a_class_picker_and_scalable_workers(services):
    master, worker = services["locust-master"], services["locust-worker"]
    assert master["ports"] == ["${PUBLISH_ADDRESS:-127.0.0.1}:8089:8089"]
    assert "--master" in master["command"] and "--worker" in worker["command"]
    assert "container_name" not in worker, "a fixed name would prevent --scale"
    # The image's healthcheck asks :8000, which Locust does not serve.
    assert "8089" in str(master["healthcheck"]["test"])
    assert worker["healthcheck"] == {"disable": True}
    config = (ROOT / "loadtests" / "locust.conf").read_text()
    assert "class-picker = true" in config


def test_compare_service_runs_the_ab_against_the_three_sites_into_a_host_folder(services):
    compare = services["compare"]
    assert compare["profiles"] == ["compare"]
    assert compare["volumes"] == ["./reports:/app/reports"]
    command = compare["entrypoint"]
    assert command[:4] == ["docker-entrypoint", "python", "-m", "loadtests.compare"]
    targets = [command[i + 1] for i, arg in enumerate(command) if arg == "--target"]
    assert sorted(targets) == [
        "baseline=http://web-baseline:8000", "ceiling=http://web-ceiling:8000", "release=http://web:8000",
    ]  # fmt: skip
    for site in ("web", "web-baseline", "web-ceiling"):
        assert compare["depends_on"][site]["condition"] == "service_healthy"


def test_pgbouncer_profile_compares_behind_four_server_connections(services):
    bouncer = services["pgbouncer"]
    assert bouncer["profiles"] == ["pgbouncer"]
    assert bouncer["environment"]["POOL_MODE"] == "transaction"
    assert bouncer["environment"]["DEFAULT_POOL_SIZE"] == bouncer["environment"]["MAX_DB_CONNECTIONS"] == "4"
    assert "pg_isready" in bouncer["healthcheck"]["test"]
    release, baseline = (
        services["web-pgbouncer"]["environment"],
        services["web-baseline-pgbouncer"]["environment"],
    )
    for env in (release, baseline):
        assert "@pgbouncer:" in env["DATABASE_URL"]
        assert env["DB_DISABLE_SERVER_SIDE_CURSORS"] == "1"
    assert (release["DB_RELEASE"], release["DB_POOL_MAX_SIZE"]) == ("cursor", "4")
    assert (baseline["DB_RELEASE"], baseline["DB_POOL_MAX_SIZE"]) == ("request", baseline["GUNICORN_THREADS"])
    for name in ("web-pgbouncer", "web-baseline-pgbouncer"):
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy"


def test_image_runs_as_a_non_root_user_with_debug_off():
    users = _dockerfile_lines("USER")
    assert users and users[-1] not in ("root", "0")
    assert "DJANGO_DEBUG=0" in (ROOT / "Dockerfile").read_text()


def test_image_installs_dependencies_before_the_code_and_keeps_one_copy():
    copies = _dockerfile_lines("COPY")
    runs = _dockerfile_lines("RUN")
    assert copies[0] == "pyproject.toml ./"
    assert "pip install -r" in runs[1]  # the layer after the first COPY: dependencies only
    assert not any("pip install ." in run or "pip install -e" in run for run in runs)
    assert "chown app:app reports" in runs[-1]  # the comparison writes its reports there
    assert "ENV GIT_COMMIT=${GIT_COMMIT}" in (ROOT / "Dockerfile").read_text()  # no git in the image


@pytest.mark.django_db(transaction=True)
def test_migrate_service_command_runs(services):
    # Through the image's entrypoint, with no key given: it makes one that settings accept.
    command = ["sh", "docker/entrypoint.sh", *services["migrate"]["command"]]
    env = environment(services["migrate"], DJANGO_SECRET_KEY="")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "seed" in (result.stdout + result.stderr).lower()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("name", "engine"), [("web", "release"), ("web-baseline", "baseline")])
def test_site_service_command_serves(services, serve, name, engine):
    service = services[name]
    image_command = _image_command()
    assert image_command[:3] == ["gunicorn", "-c", "project/gunicorn.conf.py"]
    server = serve(workers=1, env={**_compose_defaults(service), "DB_POOL": POOL})
    status, body = get(f"{server.base}/readyz")
    assert status == 200
    assert f'"engine": "{engine}"' in body


@pytest.mark.django_db(transaction=True)
def test_locust_master_and_worker_commands_run_a_load(services, serve):
    site = serve(workers=1, env={**_compose_defaults(services["web"]), "DB_POOL": POOL})
    port = free_port()
    master = _native(services["locust-master"]["command"]) + [
        "--headless", "-u", "4", "-r", "4", "-t", "3s", "--expect-workers", "1",
        "--master-bind-port", str(port), "--only-summary",
    ]  # fmt: skip
    master = _replace(master, "--host", site.base)
    worker = _replace(_native(services["locust-worker"]["command"]), "--master-host", "127.0.0.1")
    worker += ["--master-port", str(port)]
    env = {**os.environ, "SHOP_CUSTOMER_IDS": "1-50"}
    master_run = subprocess.Popen(
        master, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    worker_run = subprocess.Popen(
        worker, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        output, _ = master_run.communicate(timeout=90)
    finally:
        worker_run.wait(timeout=30)
    assert master_run.returncode in (0, 1), output[-2000:]
    aggregated = [line for line in output.splitlines() if "Aggregated" in line]
    assert aggregated, output[-2000:]
    requests = int(aggregated[0].split()[1])
    assert requests > 0


def _dockerfile_lines(keyword: str) -> list[str]:
    """The arguments of each `keyword` instruction of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith(keyword + " ")]


def _image_command() -> list[str]:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD "):
            return yaml.safe_load(line[4:])
    raise AssertionError("the Dockerfile has no CMD")


def _native(command: list[str] | str) -> list[str]:
    """The container's command, with this interpreter's copy of the tool."""
    args = shlex.split(command) if isinstance(command, str) else list(command)
    return [sys.executable, "-m", args[0], *args[1:]]


def _replace(args: list[str], option: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(option) + 1] = value
    return args
