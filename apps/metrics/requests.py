"""What one HTTP request did with database connections."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import perf_counter

from django.db import connections

Labels = tuple[str, str, str]  # alias, engine, pool

# The view of a request no URL pattern matched (a 404 before any view ran).
UNRESOLVED = "(unresolved)"


@dataclass
class AliasUsage:
    hold_seconds: float = 0.0
    wait_seconds: float = 0.0
    # Of hold_seconds: in the database, and what release keeps (CheckoutWatcher.returned()).
    database_seconds: float = 0.0
    kept_seconds: float = 0.0
    checkouts: int = 0
    ended_holding: bool = False


@dataclass
class RequestUsage:
    by_alias: dict[Labels, AliasUsage] = field(default_factory=dict)
    view: str = UNRESOLVED  # Django's view name, once the URL is resolved

    def alias(self, labels: Labels) -> AliasUsage:
        usage = self.by_alias.get(labels)
        if usage is None:
            usage = self.by_alias[labels] = AliasUsage()
            # The request's first checkout of this alias, on the thread that runs its queries.
            _this_thread.usage = self
        return usage

    def server_timing(self) -> str:
        """The Server-Timing header: hold and wait so far, in milliseconds.

        A connection still checked out (the baseline keeps it until the
        request ends) counts up to now.
        """
        hold = sum(u.hold_seconds for u in self.by_alias.values()) + _held_now()
        wait = sum(u.wait_seconds for u in self.by_alias.values())
        count = sum(u.checkouts for u in self.by_alias.values())
        return (
            f'db-hold;dur={hold * 1000:.3f};desc="DB connection held", '
            f'db-wait;dur={wait * 1000:.3f};desc="waiting for the pool", '
            f'db-checkouts;desc="{count} checkout(s)"'
        )


def _held_now() -> float:
    now = perf_counter()
    return sum(
        now - wrapper.checked_out_at
        for wrapper in connections.all(initialized_only=True)
        if getattr(wrapper, "checked_out_at", None) is not None
    )


# The current request's usage. The object is shared, so updates made in
# sync_to_async threads (the async ORM) land in the same place.
current: ContextVar[RequestUsage | None] = ContextVar("db_request_usage", default=None)

# The same usage, kept by the thread that runs the request's queries, from its
# first checkout until request_finished. Under ASGI, when the client goes away
# while the view awaits, Django cancels the view's task and sends
# request_finished itself, without response.close() (which hands the usage back
# to the context the signal runs in: DatabaseUsageMiddleware.finish), from a
# context that never saw `current` set. It runs on the request's thread all the
# same, where the async ORM ran every query (thread-sensitive sync_to_async):
# the receivers, and the checkouts they end, find the usage here.
_this_thread = threading.local()


def request_usage() -> RequestUsage | None:
    """The usage of the request this code runs for, if any."""
    usage = current.get()
    if usage is None:
        usage = getattr(_this_thread, "usage", None)
    return usage


def forget_thread_usage() -> None:
    _this_thread.usage = None


def end_request_usage() -> RequestUsage | None:
    """request_usage(), forgotten: the request has finished."""
    usage = request_usage()
    current.set(None)
    _this_thread.usage = None
    return usage
