"""SQLAlchemy's QueuePool via django-db-connection-pool; released when the cursor closes.

DATABASES = {
    "default": {
        "ENGINE": "backends.release.dj_db_conn_pool",
        "NAME": "shop",
        "POOL_OPTIONS": {"POOL_SIZE": 4, "MAX_OVERFLOW": 0, "TIMEOUT": 5, "PRE_PING": True},
    }
}
"""

from backends.instrumentation import InstrumentedMixin
from backends.queuepool import PooledDatabaseWrapper, QueuePoolMixin
from backends.releasing import ConnectionReleaseMixin


class DatabaseWrapper(ConnectionReleaseMixin, InstrumentedMixin, QueuePoolMixin, PooledDatabaseWrapper):
    pass
