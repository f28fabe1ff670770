"""Django's native pool with stock behaviour: the connection is held until the request ends.

The same pool and the same measurements as ``backends.release``, so the two
can be compared side by side.

    DATABASES = {
        "default": {
            "ENGINE": "backends.baseline",
            "NAME": "shop",
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {"pool": {"min_size": 1, "max_size": 4, "timeout": 5}},
        }
    }
"""

from django.db.backends.postgresql import base

from backends.checkout import CheckoutMixin
from backends.instrumentation import InstrumentedMixin
from backends.nativepool import NativePoolMixin


class DatabaseWrapper(CheckoutMixin, InstrumentedMixin, NativePoolMixin, base.DatabaseWrapper):
    pass
