"""Run Django's own tests against the release engines: python -m devtools.djangosuite --help"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import django

from devtools.djangosuite.expected import BOTH

PROJECT_DIR = Path(__file__).resolve().parents[2]
CACHE_DIR = PROJECT_DIR / ".cache" / "django-tests"

# The apps of Django's suite that exercise connections, transactions and session state.
# Left out because their models need what the embedded PostgreSQL is built without:
# model_fields, db_functions (an ICU collation, "sv-x-icu"), postgres_tests (pgcrypto).
APPS = (
    "transactions",
    "transaction_hooks",
    "backends",
    "queries",
    "select_for_update",
    "migrations",
    "schema",
    "timezones",
    "test_utils",
    "multiple_database",
    "db_utils",
    "get_or_create",
    "raw_query",
    "basic",
    # The request's life around the connection: close_old_connections and ATOMIC_REQUESTS in the
    # handlers, the ORM called from async code (sync_to_async threads), and a live server's
    # request threads handed the test's own connection.
    "handlers",
    "asgi",
    "async",
    "servers",
)


def say(message: str) -> None:
    print(f"[django-suite] {message}", flush=True)


def tests_folder(version: str) -> Path:
    """Django's tests/ for `version`, fetched from its source release on first use."""
    folder = CACHE_DIR / version / "tests"
    if (folder / "runtests.py").exists():
        return folder
    say(f"fetching the source release of Django {version} (its tests are not in the wheel)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"Django=={version}",
            "--dest",
            str(CACHE_DIR),
        ],
        check=True,
    )
    archive = next(CACHE_DIR.glob(f"[dD]jango-{version}.tar.gz"), None)
    if archive is None:
        sys.exit(f"pip did not leave a source archive of Django {version} in {CACHE_DIR}")
    prefix = f"{archive.name.removesuffix('.tar.gz')}/tests/"
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not any(m.name == prefix + "runtests.py" for m in members):
            sys.exit(f"{archive} has no tests/runtests.py: cannot run Django's own tests from it")
        for member in members:
            member.name = "tests/" + member.name.removeprefix(prefix)
        tar.extractall(tmp, members=members, filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / "tests", folder)
    return folder


def check_backends_merge(tests: Path) -> None:
    # settings.py serves Django's test app "backends" and this project's engines as one package.
    ours = {p.name for p in (PROJECT_DIR / "backends").iterdir()}
    theirs = {p.name for p in (tests / "backends").iterdir()}
    shared = sorted((ours & theirs) - {"__init__.py", "__pycache__"})
    if shared:
        sys.exit(
            f"backends/ and Django's tests/backends/ both have {shared}: rename this project's module(s), "
            "or run without the 'backends' app."
        )


def database_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    from devtools import localdb

    return localdb.ensure_running().url()


def run(engine: str, tests: Path, apps: list[str], parallel: int, extra: list[str]) -> tuple[int, float]:
    env = {
        **os.environ,
        "DJANGO_SUITE_ENGINE": engine,
        "DATABASE_URL": database_url(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "runtests.py",
        "--settings=devtools.djangosuite.settings",
        f"--parallel={parallel}",
        "--noinput",
        *extra,
        *apps,
    ]
    say(f"{engine}: {' '.join(command[1:])} (in {tests})")
    started = time.monotonic()
    returncode = subprocess.run(command, cwd=tests, env=env).returncode
    return returncode, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.djangosuite", description=__doc__)
    parser.add_argument(
        "apps", nargs="*", default=list(APPS), help=f"test labels (default: {' '.join(APPS)})"
    )
    parser.add_argument(
        "--engine", action="append", help=f"ENGINE to test, repeatable (default: {' '.join(BOTH)})"
    )
    # One process: Django's parallel runner forks workers after the parent has opened the pools,
    # and each worker goes on using the parent's pool (the alias's pool is shared across the fork,
    # pointing at the first test database): stock Django with a pool fails the same way.
    parser.add_argument("--parallel", type=int, default=1, help="test processes per engine (default: 1)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to runtests.py, e.g. -v 2, -k NAME
    version = django.get_version()
    tests = tests_folder(version)
    if any(label.split(".")[0] == "backends" for label in args.apps):
        check_backends_merge(tests)
    outcomes = []
    for engine in args.engine or BOTH:
        returncode, seconds = run(engine, tests, args.apps, args.parallel, extra)
        outcomes.append((engine, returncode, seconds))
    say(f"Django {version}, apps: {' '.join(args.apps)}")
    for engine, returncode, seconds in outcomes:
        say(f"  {engine}: {'passed' if returncode == 0 else 'FAILED'} in {seconds:.0f} s")
    failed = [engine for engine, returncode, _ in outcomes if returncode]
    if failed:
        say(
            "the failures are under 'NOT EXPECTED' above; known differences: devtools/djangosuite/expected.py"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
