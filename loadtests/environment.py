"""Set up Django in a load-test tool's own process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def django_environment() -> Iterator[None]:
    """The embedded PostgreSQL (or DATABASE_URL), migrated, and Django set up in this process."""
    import django
    from django.core.management import call_command

    from devtools.serve import configure_environment

    configure_environment()
    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    try:
        yield
    finally:
        from django.db import connections

        connections.close_all()
