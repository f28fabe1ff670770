"""Mistakes in configuration fail at start, with the fix in the message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db.utils import ConnectionHandler

from backends.checks import database_warnings
from project.database import engine_for, with_pool
from tests.conftest import POOL

ROOT = Path(__file__).resolve().parent.parent


def open_alias(config: dict):
    """Build the DatabaseWrapper Django would build for this DATABASES entry."""
    return ConnectionHandler({"default": config})["default"]


def native(**extra) -> dict:
    return {"ENGINE": "backends.release", "NAME": "shop", "OPTIONS": {"pool": True}, **extra}


def queue_pooled(**extra) -> dict:
    return {"ENGINE": "backends.release.dj_db_conn_pool", "NAME": "shop", **extra}


def run_django(env: dict, code: str = "import django; django.setup()") -> subprocess.CompletedProcess:
    """Start Django in a fresh interpreter, as a server process would."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": "x" * 50,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/never-contacted",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True
    )


@pytest.mark.parametrize("engine", ["backends.release", "backends.baseline"])
def test_native_engine_without_a_pool_is_refused_when_it_first_connects(engine, django_db_blocker):
    # Built, as stock Django builds any wrapper: tools make one from a settings dict without
    # connecting (Django's test runner renames its database), and that must work.
    wrapper = open_alias({"ENGINE": engine, "NAME": "shop"})
    wrapper.settings_dict["NAME"] = "renamed"
    wrapper.close()
    with django_db_blocker.unblock(), pytest.raises(ImproperlyConfigured) as refused:
        wrapper.ensure_connection()  # refused before any network: NAME "renamed" is never asked for
    message = str(refused.value)
    assert message.startswith(f"DATABASES['default'] uses '{engine}', which needs Django's connection pool")
    assert '"OPTIONS": {"pool": {"min_size": 1, "max_size": 4}}' in message
    assert "DB_POOL" not in message  # it speaks of DATABASES only, in anyone's project
    assert wrapper.connection is None


@pytest.mark.parametrize("engine", ["backends.release", "backends.baseline"])
def test_native_engine_without_a_pool_is_an_error_of_the_system_checks(engine):
    [error] = database_warnings({"default": {"ENGINE": engine, "NAME": "shop", "CONN_HEALTH_CHECKS": True}})
    assert error.id == "backends.E001" and error.is_serious()
    assert "OPTIONS['pool']" in error.msg and '"OPTIONS": {"pool": ' in error.hint
    pooled = with_pool({"ENGINE": engine, "NAME": "shop"}, "native", min_size=1, max_size=2, timeout=1)
    assert database_warnings({"default": pooled}) == []
    queue_pooled = {"ENGINE": f"{engine}.dj_db_conn_pool", "NAME": "shop"}
    assert database_warnings({"default": queue_pooled}) == []  # its pool is POOL_OPTIONS


@pytest.mark.parametrize("make", [native, queue_pooled], ids=["native", "dj_db_conn_pool"])
def test_persistent_connections_are_refused(make):
    with pytest.raises(ImproperlyConfigured, match="Set CONN_MAX_AGE to 0"):
        open_alias(make(CONN_MAX_AGE=60))


@pytest.mark.parametrize("make", [native, queue_pooled], ids=["native", "dj_db_conn_pool"])
def test_autocommit_off_is_refused_by_a_release_engine(make):
    with pytest.raises(ImproperlyConfigured, match="Remove AUTOCOMMIT"):
        open_alias(make(AUTOCOMMIT=False))


def test_autocommit_off_is_left_to_the_baseline():
    wrapper = open_alias(native(ENGINE="backends.baseline", AUTOCOMMIT=False))
    assert wrapper.settings_dict["AUTOCOMMIT"] is False


def test_queue_pool_engine_with_a_native_pool_option_is_refused():
    pytest.importorskip("dj_db_conn_pool")
    with pytest.raises(ImproperlyConfigured, match=r"remove OPTIONS\['pool'\]"):
        open_alias(queue_pooled(OPTIONS={"pool": True}))


def test_queue_pool_engine_without_the_package_names_the_install():
    code = (
        "import sys; sys.modules['dj_db_conn_pool'] = None\n"  # as if it were not installed
        "import django; django.setup()\n"
        "from django.db import connection; connection.vendor\n"
    )
    result = run_django({"DB_POOL": "dj_db_conn_pool"}, code)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "pip install 'django-db-connection-pool[postgresql]'" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("DB_RELEASE", "sometimes", "use 'cursor'"),
        ("DB_POOL", "pgbouncer", "use 'native'"),
        ("DB_POOL_MAX_SIZE", "0", "DB_POOL_MAX_SIZE must be at least 1"),
        ("DB_POOL_TIMEOUT", "-1", "DB_POOL_TIMEOUT=-1.0 must be a positive"),
    ],
)
def test_bad_environment_fails_at_start(variable, value, hint):
    result = run_django({variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert hint in result.stderr


def test_missing_secret_key_fails_at_start_unless_debug():
    refused = run_django({"DJANGO_SECRET_KEY": ""})
    assert "DJANGO_SECRET_KEY is not set" in refused.stderr
    assert run_django({"DJANGO_SECRET_KEY": "", "DJANGO_DEBUG": "1"}).returncode == 0


@pytest.mark.parametrize(
    ("release", "pool", "engine"),
    [
        ("cursor", "native", "backends.release"),
        ("cursor", "dj_db_conn_pool", "backends.release.dj_db_conn_pool"),
        ("request", "native", "backends.baseline"),
        ("request", "dj_db_conn_pool", "backends.baseline.dj_db_conn_pool"),
    ],
)
def test_environment_selects_the_engine(release, pool, engine):
    assert engine_for(release, pool) == engine


def test_atomic_requests_on_a_release_engine_is_a_warning():
    config = {"ENGINE": engine_for("cursor", POOL), "ATOMIC_REQUESTS": True}
    config = with_pool(config, POOL, min_size=1, max_size=2, timeout=1)
    [warning] = database_warnings({"default": config})
    assert warning.id == "backends.W001"
    assert "transaction.atomic()" in warning.hint


def test_atomic_requests_on_the_baseline_is_not_our_business():
    config = {"ENGINE": engine_for("request", POOL), "ATOMIC_REQUESTS": True}
    config = with_pool(config, POOL, min_size=1, max_size=2, timeout=1)
    assert database_warnings({"default": config}) == []


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        (
            {"ENGINE": "backends.release", "CONN_HEALTH_CHECKS": False, "OPTIONS": {"pool": True}},
            "CONN_HEALTH_CHECKS",
        ),
        (
            {"ENGINE": "backends.release.dj_db_conn_pool", "POOL_OPTIONS": {"PRE_PING": False}},
            "PRE_PING",
        ),
    ],
)
def test_health_checks_off_is_a_warning(config, setting):
    [warning] = database_warnings({"default": config})
    assert warning.id == "backends.W002"
    assert setting in warning.msg


def test_project_settings_pass_the_system_checks(capsys):
    call_command("check", fail_level="WARNING")
    assert "no issues" in capsys.readouterr().out
