"""Django's native pool; the connection goes back to it when the cursor closes.

DATABASES = {
    "default": {
        "ENGINE": "backends.release",
        "NAME": "shop",
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 4, "timeout": 5}},
    }
}
"""

from django.db.backends.postgresql import base

from backends.instrumentation import InstrumentedMixin
from backends.nativepool import NativePoolMixin
from backends.releasing import ConnectionReleaseMixin


class DatabaseWrapper(ConnectionReleaseMixin, InstrumentedMixin, NativePoolMixin, base.DatabaseWrapper):
    pass
