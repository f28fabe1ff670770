"""Sales per calendar day in the caller's time zone: per-request session state, done right.

PostgreSQL cuts a timestamp into days in the session's ``TimeZone``. Setting it
with a plain ``SET TIME ZONE`` would change the pooled connection for whoever
borrows it next, so the release engines would keep the connection until the
request ends (and reset it). ``SET LOCAL`` inside ``transaction.atomic()`` (here
in its function form, ``set_config(..., true)``, which takes the zone as a query
parameter) lasts until the transaction ends: the connection goes back at the
commit, as it came.
"""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db import connection, transaction

DAILY_SQL = """
    SELECT o.created_at::date AS day,
           count(DISTINCT o.id) AS orders,
           sum(l.quantity * l.unit_price) AS revenue
    FROM orders_order o
    JOIN orders_orderline l ON l.order_id = o.id
    WHERE o.created_at >= %s AND o.created_at < %s AND o.status <> 'cancelled'
    GROUP BY 1
    ORDER BY 1
"""


@dataclass(frozen=True)
class DaySales:
    day: date
    orders: int
    revenue: Decimal

    def as_json(self) -> dict:
        return {"day": self.day.isoformat(), "orders": self.orders, "revenue": str(self.revenue)}


@functools.cache
def time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def daily_sales(start: datetime, end: datetime, zone: str) -> list[DaySales]:
    """Sales of orders placed in [start, end), by calendar day in `zone` (an IANA name, checked)."""
    if zone not in time_zones():
        raise ValueError(f"Unknown time zone {zone!r}.")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('TimeZone', %s, true)", [zone])
        cursor.execute(DAILY_SQL, [start, end])
        return [DaySales(*row) for row in cursor.fetchall()]
