"""The slow external service the demo views call, simulated.

Real views often query the database and then wait on something else: a payment
provider, a search cluster, a recommendation API. While they wait they need no
database connection, but stock Django keeps the one they borrowed until the
request ends. This module stands in for that call with a sleep of
``settings.EXTERNAL_LATENCY_MS`` (env EXTERNAL_LATENCY_MS, 50 ms by default),
read on every call so tests and load runs can change it.
"""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections


def holds_connection(alias: str = "default") -> bool:
    """Whether this thread has a pooled connection checked out for `alias` right now."""
    return connections[alias].connection is not None


def shipping_estimate(product_id: int) -> dict:
    """Ask the (simulated) shipping service how long delivery takes; blocks for the latency."""
    latency_ms = settings.EXTERNAL_LATENCY_MS
    time.sleep(latency_ms / 1000)
    return {"service": "shipping-estimate", "latency_ms": latency_ms, "delivery_days": 2 + product_id % 5}


async def ashipping_estimate(product_id: int) -> dict:
    """shipping_estimate() awaited, as an async client (httpx, aiohttp) would: no thread waits."""
    latency_ms = settings.EXTERNAL_LATENCY_MS
    await asyncio.sleep(latency_ms / 1000)
    return {"service": "shipping-estimate", "latency_ms": latency_ms, "delivery_days": 2 + product_id % 5}


def call_with_report(product_id: int) -> dict:
    """shipping_estimate(), plus whether a database connection sat idle, checked out, during it.

    With DB_RELEASE=cursor that is False for views that close their cursors; with
    DB_RELEASE=request (stock Django), or for a cursor left open, it is True.
    """
    held = holds_connection()
    return {**shipping_estimate(product_id), "db_connection_held_during_call": held}


async def acall_with_report(product_id: int) -> dict:
    """call_with_report() for async views.

    Django runs an async view's ORM calls on one thread per request (a
    thread-sensitive sync_to_async), and the connection is that thread's: ask there.
    """
    held = await sync_to_async(holds_connection)()
    return {**(await ashipping_estimate(product_id)), "db_connection_held_during_call": held}
