"""Build the DATABASES entry from DATABASE_URL, DB_RELEASE, DB_POOL and the pool sizes."""

from __future__ import annotations

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

RELEASE_CHOICES = {"cursor": "backends.release", "request": "backends.baseline"}
POOL_CHOICES = ("native", "dj_db_conn_pool")


def engine_for(release: str, pool: str) -> str:
    """The ENGINE path for DB_RELEASE=`release` and DB_POOL=`pool`."""
    if release not in RELEASE_CHOICES:
        raise ImproperlyConfigured(
            f"DB_RELEASE={release!r} is not known: use 'cursor' (give the connection back when "
            "the cursor closes) or 'request' (stock Django: at the end of the request)."
        )
    if pool not in POOL_CHOICES:
        raise ImproperlyConfigured(
            f"DB_POOL={pool!r} is not known: use 'native' (Django's psycopg pool) or "
            "'dj_db_conn_pool' (django-db-connection-pool)."
        )
    engine = RELEASE_CHOICES[release]
    return engine if pool == "native" else f"{engine}.dj_db_conn_pool"


def pool_settings(
    pool: str, *, min_size: int, max_size: int, timeout: float, reconnect_timeout: float | None = None
) -> dict:
    """The part of a DATABASES entry that sizes the pool, for either pool.

    `reconnect_timeout` (DB_POOL_RECONNECT_TIMEOUT) is how long psycopg_pool keeps
    replacing a lost connection in the background; None leaves the engine's default
    (backends.nativepool.RECONNECT_TIMEOUT_SECONDS). QueuePool connects in the
    request that asks, so it has nothing to set.
    """
    if min_size < 0 or max_size < 1 or min_size > max_size:
        raise ImproperlyConfigured(
            f"Pool sizes min={min_size}, max={max_size} are not valid: "
            "DB_POOL_MAX_SIZE must be at least 1 and at least DB_POOL_MIN_SIZE."
        )
    if timeout <= 0:
        raise ImproperlyConfigured(f"DB_POOL_TIMEOUT={timeout} must be a positive number of seconds.")
    if reconnect_timeout is not None and reconnect_timeout <= 0:
        raise ImproperlyConfigured(
            f"DB_POOL_RECONNECT_TIMEOUT={reconnect_timeout} must be a positive number of seconds."
        )
    if pool == "native":
        sizes = {"min_size": min_size, "max_size": max_size, "timeout": timeout}
        if reconnect_timeout is not None:
            sizes["reconnect_timeout"] = reconnect_timeout
        return {"CONN_HEALTH_CHECKS": True, "pool": sizes}
    # QueuePool opens connections on demand, so there is no minimum size.
    return {
        "POOL_OPTIONS": {
            "POOL_SIZE": max_size,
            "MAX_OVERFLOW": 0,
            "TIMEOUT": timeout,
            "PRE_PING": True,
            "RECYCLE": 15 * 60,
        }
    }


def database_settings(
    url: str,
    *,
    release: str,
    pool: str,
    min_size: int,
    max_size: int,
    timeout: float,
    reconnect_timeout: float | None = None,
) -> dict:
    config = dj_database_url.parse(url, engine=engine_for(release, pool), conn_max_age=0)
    sizes = {"min_size": min_size, "max_size": max_size, "timeout": timeout}
    return with_pool(config, pool, **sizes, reconnect_timeout=reconnect_timeout)


def with_pool(config: dict, pool: str, **sizes) -> dict:
    """A copy of a DATABASES entry, set up for `pool` with the given sizes."""
    extra = pool_settings(pool, **sizes)
    options = {k: v for k, v in config.get("OPTIONS", {}).items() if k != "pool"}
    if "pool" in extra:
        options["pool"] = extra.pop("pool")
    config = {k: v for k, v in config.items() if k != "POOL_OPTIONS"}
    return {**config, **extra, "OPTIONS": options}
