"""The shop's background tasks, run by the Celery worker (project/celery.py, `make worker`).

confirm_order is what task queues run all day: it reads, waits on another service,
and writes. Stock Django keeps the connection of the task's first query until the
task ends, through the wait; the release engines give it back as each query's
cursor closes, so while this task waits the connection serves the others.

    celery -A project call apps.orders.tasks.confirm_order --args '[1]'

Each confirmation records whether the task held a connection during the carrier's
call (Confirmation.connection_held_during_call), as the demo views report it.
"""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.db import transaction

from apps.catalog.external import holds_connection
from apps.orders.models import Confirmation, Order
from project.celery import app


def delivery_estimate(order: Order, lines: int) -> dict:
    """Ask the carrier (simulated) when the order arrives; blocks for TASK_EXTERNAL_LATENCY_MS.

    The latency is read on every call, so tests and load runs can change it.
    """
    latency_ms = settings.TASK_EXTERNAL_LATENCY_MS
    time.sleep(latency_ms / 1000)
    return {"service": "carrier", "latency_ms": latency_ms, "delivery_days": 1 + (order.pk + lines) % 5}


@app.task(bind=True)
def confirm_order(self, order_id: int) -> dict:
    """Read the order, ask the carrier for a delivery date, write the confirmation."""
    order = Order.objects.select_related("customer").get(pk=order_id)
    lines = order.lines.count()
    return report(order, send_confirmation(order, lines, task_id(self)))


@app.task(bind=True)
def confirm_order_once(self, order_id: int) -> dict:
    """confirm_order(), at most once per order however many tasks ask: under the order's row lock.

    The lock lasts until the transaction ends, through the carrier's call, and the
    connection with it on every engine: nothing is given back inside atomic().
    """
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).select_related("customer").get(pk=order_id)
        confirmation = order.confirmations.first()
        if confirmation is None:
            confirmation = send_confirmation(order, order.lines.count(), task_id(self))
    return report(order, confirmation)


def send_confirmation(order: Order, lines: int, task: str) -> Confirmation:
    held = holds_connection()  # just before the call: what the call keeps checked out
    estimate = delivery_estimate(order, lines)
    return Confirmation.objects.create(
        order=order, task_id=task, delivery_days=estimate["delivery_days"], connection_held_during_call=held
    )


def task_id(task) -> str:
    # Called as a plain function (not through a worker), a task has no id.
    return task.request.id or f"direct-{uuid.uuid4()}"


def report(order: Order, confirmation: Confirmation) -> dict:
    return {
        "order": order.number,
        "to": order.customer.email,
        "delivery_days": confirmation.delivery_days,
        "db_connection_held_during_call": confirmation.connection_held_during_call,
    }
