"""Settings for Django's own test suite (its tests/runtests.py) on one of this project's engines.

`python -m devtools.djangosuite` sets the environment and runs runtests.py with these settings:
DJANGO_SUITE_ENGINE is the ENGINE under test, DATABASE_URL the server (both required here, so
importing this module starts nothing). "default" and "other" are two test databases on that
server, each with a pool of its own. The rest is the settings Django's own suite runs with
(tests/test_sqlite.py of the same release).
"""

import os
from pathlib import Path

import dj_database_url
from test_sqlite import *  # noqa: F403  (Django's tests/, first on sys.path under runtests.py)

from project.database import with_pool

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Django's suite has a test app called "backends" (tests/backends), first on sys.path while
# runtests.py runs, so `import backends` finds it and not the engines. Adding this project's
# folder to that package's path makes both importable under the one name: `backends.release`
# from here, `backends.tests` from Django (`python -m devtools.djangosuite` checks that the two
# folders share no module name).
import backends  # noqa: E402  (Django's test app)

if str(PROJECT_DIR / "backends") not in backends.__path__:
    backends.__path__.append(str(PROJECT_DIR / "backends"))

ENGINE = os.environ["DJANGO_SUITE_ENGINE"]
if ENGINE.startswith("django.db.backends."):
    POOL = None  # stock Django as its own CI runs it, without a pool: the reference to compare with
elif "dj_db_conn_pool" in ENGINE:
    POOL = "dj_db_conn_pool"
else:
    POOL = "native"


def _database(alias: str) -> dict:
    config = dj_database_url.parse(os.environ["DATABASE_URL"], engine=ENGINE, conn_max_age=0)
    if POOL:
        # A few tests run queries in several threads at once (select_for_update, backends).
        config = with_pool(config, POOL, min_size=0, max_size=6, timeout=10.0)
    # Apart from the test database of the project's own suite (test_NAME).
    config["TEST"] = {"NAME": f"test_{config['NAME']}_djangosuite_{alias}"}
    return config


DATABASES = {"default": _database("default"), "other": _database("other")}

# Marks the tests listed in expected.py as expected to fail, and fails the run on any other.
TEST_RUNNER = "devtools.djangosuite.runner.SuiteRunner"
