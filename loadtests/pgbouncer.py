"""PgBouncer in transaction mode in front of the comparison's database, started and stopped by the run.

The side people would pick instead of early release: stock Django with an app
pool as large as its threads, behind a pooler that lends its few server
connections one transaction at a time. Needs a `pgbouncer` binary (Debian and
Ubuntu: `apt-get install pgbouncer`; macOS: `brew install pgbouncer`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import dj_database_url

from loadtests.site import StartError, ensure_port_free

INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install pgbouncer) or pass --no-pgbouncer"


def binary() -> str | None:
    return shutil.which("pgbouncer")


def quoted(value: str) -> str:
    """A value for a PgBouncer connection string (libpq's quoting)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """One PgBouncer on 127.0.0.1:`port` with `server_connections` to the database at `database_url`."""

    def __init__(self, database_url: str, port: int, server_connections: int, workdir: Path) -> None:
        self.upstream = dj_database_url.parse(database_url)
        self.port = port
        self.server_connections = server_connections
        self.log_path = workdir / f"pgbouncer-{port}.log"
        self.folder: tempfile.TemporaryDirectory | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """DATABASE_URL for the site: the same database and user, through PgBouncer."""
        u = self.upstream
        password = f":{quote(u['PASSWORD'], safe='')}" if u.get("PASSWORD") else ""
        return f"postgres://{quote(u['USER'], safe='')}{password}@127.0.0.1:{self.port}/{u['NAME']}"

    def config(self, folder: Path) -> str:
        u = self.upstream
        host = u.get("HOST") or "/tmp"
        server = f"host={quoted(host)} port={u.get('PORT') or 5432} dbname={quoted(u['NAME'])}"
        server += f" user={quoted(u['USER'])}"
        if u.get("PASSWORD"):
            server += f" password={quoted(u['PASSWORD'])}"
        lines = [
            "[databases]",
            f"{u['NAME']} = {server}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            # Clients are this machine's own site; the server side logs in as the URL says.
            "auth_type = trust",
            f"auth_file = {folder / 'users.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {self.server_connections}",
            f"max_db_connections = {self.server_connections}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 2000",
            "ignore_startup_parameters = extra_float_digits,options",
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        user = self.unprivileged_user(host)
        if user:
            lines.append(f"user = {user}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def unprivileged_user(host: str) -> str | None:
        """PgBouncer refuses to run as root: as root, run it as the user who owns the socket folder."""
        if os.geteuid() != 0:
            return None
        try:
            owner = Path(host).stat().st_uid if host.startswith("/") else None
        except OSError:
            owner = None
        return pwd.getpwuid(owner).pw_name if owner else "nobody"

    def start(self, timeout: float = 15) -> None:
        program = binary()
        if program is None:
            raise StartError(f"no pgbouncer on this machine: {INSTALL_HINT}")
        ensure_port_free(self.port)
        self.folder = tempfile.TemporaryDirectory(prefix="pgbouncer-")
        folder = Path(self.folder.name)
        folder.chmod(0o755)  # readable by the user it switches to
        (folder / "users.txt").write_text(f'"{self.upstream["USER"]}" ""\n')
        (folder / "pgbouncer.ini").write_text(self.config(folder))
        for name in ("users.txt", "pgbouncer.ini"):
            (folder / name).chmod(0o644)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [program, str(folder / "pgbouncer.ini")], stdout=log, stderr=log, start_new_session=True
            )
        self._wait_until_listening(timeout)

    def _wait_until_listening(self, timeout: float) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(f"pgbouncer exited at start; its log:\n{self.log_tail()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise StartError(f"pgbouncer did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
