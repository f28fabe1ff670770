"""What one HTTP request did with database connections."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from time import perf_counter

from django.db import connections

Labels = tuple[str, str, str]  # alias, engine, pool


@dataclass
class AliasUsage:
    hold_seconds: float = 0.0
    wait_seconds: float = 0.0
    checkouts: int = 0
    ended_holding: bool = False


@dataclass
class RequestUsage:
    by_alias: dict[Labels, AliasUsage] = field(default_factory=dict)

    def alias(self, labels: Labels) -> AliasUsage:
        usage = self.by_alias.get(labels)
        if usage is None:
            usage = self.by_alias[labels] = AliasUsage()
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
