"""Settings for the test suite: the project's own, plus two aliases the tests resize at will."""

import os

# As long as settings require with DEBUG off (50 characters); never used outside the tests.
os.environ.setdefault("DJANGO_SECRET_KEY", "insecure-key-for-the-test-suite-only-never-use-it-elsewhere")
# An exhausted pool answers within a second instead of five.
os.environ.setdefault("DB_POOL_TIMEOUT", "1")

from project.settings import *  # noqa: E402,F403
from project.settings import DATABASES  # noqa: E402

# Same test database as "default"; tests/conftest.py gives each a small pool of its own:
# "pool" runs the engine under test (DB_RELEASE), "baseline_pool" the stock-Django baseline.
for alias in ("pool", "baseline_pool"):
    DATABASES[alias] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
