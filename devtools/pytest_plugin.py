"""Start the embedded PostgreSQL for the test suite when DATABASE_URL is unset.

Loaded with ``-p devtools.pytest_plugin`` (pyproject.toml's addopts). Its hook runs
before pytest-django reads the settings, so they find the server already up.
"""

import pytest

from devtools import localdb


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args) -> None:
    try:
        localdb.ensure_database()
    except localdb.LocalDatabaseError as exc:
        raise pytest.UsageError(str(exc)) from exc
