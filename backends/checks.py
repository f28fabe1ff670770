"""System checks for settings that silently cancel the early release."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register

RELEASE_ENGINES = ("backends.release", "backends.release.dj_db_conn_pool")
OUR_ENGINES = RELEASE_ENGINES + ("backends.baseline", "backends.baseline.dj_db_conn_pool")


@register(Tags.compatibility)
def check_release_settings(app_configs=None, **kwargs):
    return database_warnings(settings.DATABASES)


def database_warnings(databases: dict) -> list[Warning]:
    warnings = []
    for alias, config in databases.items():
        engine = config.get("ENGINE")
        if engine not in OUR_ENGINES:
            continue
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
