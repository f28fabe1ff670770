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
@pytest.mark.parametrize("profile", [[], ["--profile", "pgbouncer"]], ids=["default", "pgbouncer"])
def test_compose_file_is_valid(profile):
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *profile, "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_both_sites_share_everything_but_the_release_point(services):
    web, baseline = services["web"], services["web-baseline"]
    assert web["environment"]["DB_RELEASE"] == "cursor"
    assert baseline["environment"]["DB_RELEASE"] == "request"
    differing = {
        k for k in web["environment"].keys() | baseline["environment"].keys()
        if web["environment"].get(k) != baseline["environment"].get(k)
    }  # fmt: skip
    assert differing == {"DB_RELEASE"}
    assert web["ports"] == ["8000:8000"] and baseline["ports"] == ["8001:8000"]
    assert web["image"] == baseline["image"]


def test_sites_start_after_the_database_is_healthy_and_migrated(services):
    assert services["db"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("web", "web-baseline"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "pgdata:/var/lib/postgresql" in services["db"]["volumes"]


def test_locust_has_a_web_ui_and_scalable_workers(services):
    assert services["locust-master"]["ports"] == ["8089:8089"]
    assert "--master" in services["locust-master"]["command"]
    assert "--worker" in services["locust-worker"]["command"]
    assert "container_name" not in services["locust-worker"], "a fixed name would prevent --scale"


def test_pgbouncer_profile_runs_in_transaction_mode(services):
    assert services["pgbouncer"]["profiles"] == ["pgbouncer"]
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    behind = services["web-pgbouncer"]["environment"]
    assert "@pgbouncer:" in behind["DATABASE_URL"]
    assert behind["DB_DISABLE_SERVER_SIDE_CURSORS"] == "1"


def test_image_runs_as_a_non_root_user_with_debug_off():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line and line[0].isupper()]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].strip() not in ("root", "0")
    assert "DJANGO_DEBUG=0" in dockerfile


@pytest.mark.django_db(transaction=True)
def test_migrate_service_command_runs(services):
    command = services["migrate"]["command"]
    env = environment(services["migrate"])
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
