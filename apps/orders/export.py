"""Every order line as CSV, streamed: memory stays flat however many orders there are.

The rows come from a server-side cursor (``.iterator(chunk_size=…)``), so the
process holds one chunk at a time instead of the whole result; the response is a
generator, so it holds one block of CSV text at a time instead of the whole
file. The cursor, and with it the pooled connection, is held while the response
streams, and given back as soon as the last row is read or the client goes away.

Under ASGI, Django reads a synchronous streaming body completely before sending
it, so the flat-memory property holds under WSGI (gunicorn, runserver).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from apps.orders.models import OrderLine

CHUNK_SIZE = 2_000  # rows fetched from the server-side cursor at a time
ROWS_PER_BLOCK = 500  # CSV rows per piece of the response

HEADER = [
    "order",
    "created_at",
    "status",
    "customer_id",
    "sku",
    "product",
    "quantity",
    "unit_price",
    "line_total",
]


class _Line:
    """A file-like object whose write() returns the line, so csv.writer formats without storing."""

    def write(self, text: str) -> str:
        return text


def order_rows() -> Iterator[tuple]:
    return (
        # (order, product) is the unique index, so rows come in index order with no big sort first.
        OrderLine.objects.order_by("order_id", "product_id")
        .values_list(
            "order__number",
            "order__created_at",
            "order__status",
            "order__customer_id",
            "product__sku",
            "product__name",
            "quantity",
            "unit_price",
        )
        .iterator(chunk_size=CHUNK_SIZE)
    )


def csv_blocks() -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(HEADER)
    rows = order_rows()
    try:
        block = []
        for number, created_at, status, customer, sku, name, quantity, unit_price in rows:
            block.append(
                writer.writerow(
                    [
                        number,
                        created_at.isoformat(),
                        status,
                        customer,
                        sku,
                        name,
                        quantity,
                        unit_price,
                        quantity * unit_price,
                    ]
                )
            )
            if len(block) == ROWS_PER_BLOCK:
                yield "".join(block)
                block = []
        if block:
            yield "".join(block)
    finally:
        # A client that disconnects closes this generator; closing the rows closes
        # the server-side cursor now, in this thread, so the connection goes back.
        rows.close()
