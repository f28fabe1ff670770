"""Serve the sample site under gunicorn, ready to use: `python -m devtools.serve` (`make run`).

Starts (or reuses) the embedded PostgreSQL unless DATABASE_URL is set, migrates,
seeds, collects static files, then hands over to gunicorn.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    # Progress goes to stderr: the tools that set up through here (the
    # overhead benchmark's --json, for one) keep stdout for their results.
    print(f"==> {message}", file=sys.stderr, flush=True)


def secret_key() -> str:
    """A key kept in the git-ignored .localdb/, made once per checkout."""
    from devtools.localdb import LOCALDB_DIR

    path = LOCALDB_DIR / "secret-key"
    if not path.exists():
        LOCALDB_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def configure_environment() -> str:
    """Point this process (and the ones it starts) at a database; return DATABASE_URL."""
    if not os.environ.get("DATABASE_URL"):
        from devtools import localdb

        say("starting (or reusing) the embedded PostgreSQL")
        os.environ["DATABASE_URL"] = localdb.ensure_running().url()
    else:
        say("using the database at DATABASE_URL")
    if not os.environ.get("DJANGO_SECRET_KEY"):  # not setdefault(): that would make the file anyway
        os.environ["DJANGO_SECRET_KEY"] = secret_key()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    return os.environ["DATABASE_URL"]


def prepare(seed_size: str | None, static: bool = True) -> None:
    """Migrate, seed and collect static files (unless `static` is false), in this process."""
    import django
    from django.core.management import call_command

    django.setup()
    say("migrating")
    call_command("migrate", interactive=False, verbosity=0)
    if seed_size:
        say(f"seeding ({seed_size})")
        call_command("seed", size=seed_size)
    if static:
        say("collecting static files")
        call_command("collectstatic", interactive=False, verbosity=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", default="small", help="seed size, or 'none' to skip seeding")
    parser.add_argument(
        "--asgi", action="store_true", help="serve project.asgi under uvicorn workers (as SERVER=asgi does)"
    )
    args = parser.parse_args(argv)

    configure_environment()
    prepare(None if args.seed == "none" else args.seed)

    bind = os.environ.setdefault("GUNICORN_BIND", "127.0.0.1:8000")
    command = [sys.executable, "-m", "gunicorn", "-c", str(BASE_DIR / "project" / "gunicorn.conf.py")]
    if args.asgi:
        os.environ["SERVER"] = "asgi"  # project/gunicorn.conf.py picks the worker and the app
    release = os.environ.get("DB_RELEASE", "cursor")
    say(f"serving on http://{bind}/ (DB_RELEASE={release}); Ctrl-C stops it")
    say(f"look at http://{bind}/ for the shop and http://{bind}/pool/ for the live pool dashboard")
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
