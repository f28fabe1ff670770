"""System checks for settings that silently cancel the early release, or that an engine refuses."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

RELEASE_ENGINES = ("backends.release", "backends.release.dj_db_conn_pool")
OUR_ENGINES = RELEASE_ENGINES + ("backends.baseline", "backends.baseline.dj_db_conn_pool")
NATIVE_POOL_ENGINES = ("backends.release", "backends.baseline")


@register(Tags.compatibility)
def check_release_settings(app_configs=None, **kwargs):
    return database_warnings(settings.DATABASES)


def database_warnings(databases: dict) -> list[CheckMessage]:
    warnings = []
    for alias, config in databases.items():
        engine = config.get("ENGINE")
        if engine not in OUR_ENGINES:
            continue
        if engine in NATIVE_POOL_ENGINES and not (config.get("OPTIONS") or {}).get("pool"):
            # The engine refuses it at its first connection (backends/nativepool.py says why
            # not sooner); this says so when the project starts, before anything connects.
            warnings.append(
                Error(
                    f"DATABASES[{alias!r}] uses {engine!r} without OPTIONS['pool'].",
                    hint=(
                        "The engine needs Django's connection pool and refuses to connect without "
                        'one: add "OPTIONS": {"pool": {"min_size": 1, "max_size": 4}} to it.'
                    ),
                    id="backends.E001",
                )
            )
        if engine in RELEASE_ENGINES and config.get("ATOMIC_REQUESTS"):
            warnings.append(
                Warning(
                    f"DATABASES[{alias!r}] sets ATOMIC_REQUESTS with {engine!r}.",
                    hint=(
                        "Every view then runs inside one transaction, so its connection is held "
                        "until the response is ready and nothing is given back early. Remove "
                        "ATOMIC_REQUESTS and wrap only the writes in transaction.atomic()."
                    ),
                    id="backends.W001",
                )
            )
        if engine.endswith("dj_db_conn_pool"):
            ping = {k.upper(): v for k, v in config.get("POOL_OPTIONS", {}).items()}.get("PRE_PING", True)
            off = not ping
            setting = "POOL_OPTIONS['PRE_PING']"
        else:
            off = not config.get("CONN_HEALTH_CHECKS", False)
            setting = "CONN_HEALTH_CHECKS"
        if off:
            warnings.append(
                Warning(
                    f"DATABASES[{alias!r}] turns {setting} off.",
                    hint=(
                        "A connection the server has closed (restart, pg_terminate_backend, idle "
                        f"timeout) would be handed to a query and fail it. Set {setting} to True; "
                        "the check only pings connections idle for more than half a second."
                    ),
                    id="backends.W002",
                )
            )
    return warnings
