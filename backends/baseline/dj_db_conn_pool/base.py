"""SQLAlchemy's QueuePool via django-db-connection-pool, held until the request ends (stock).

DATABASES = {
    "default": {
        "ENGINE": "backends.baseline.dj_db_conn_pool",
        "NAME": "shop",
        "POOL_OPTIONS": {"POOL_SIZE": 4, "MAX_OVERFLOW": 0, "TIMEOUT": 5, "PRE_PING": True},
    }
}
"""

from backends.checkout import CheckoutMixin
from backends.instrumentation import InstrumentedMixin
from backends.queuepool import PooledDatabaseWrapper, QueuePoolMixin


class DatabaseWrapper(CheckoutMixin, InstrumentedMixin, QueuePoolMixin, PooledDatabaseWrapper):
    pass
