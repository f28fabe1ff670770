"""Every order line as CSV, streamed: memory stays flat however many orders there are.

The rows come from a server-side cursor (``.iterator(chunk_size=…)``), so the
process holds one chunk at a time instead of the whole result; the response is a
generator, so it holds one block of CSV text at a time instead of the whole
file. The cursor, and with it the pooled connection, is held while the response
streams, and given back as soon as the last row is read or the client goes away.

Three things make the stream safe to rely on:

* The first query runs in the view, before the response exists (OrderExport()):
  a database that is down or busy is answered with a 503, not with a 200 whose
  body stops after the header.
* The cursor lives inside ``transaction.atomic()``. Behind PgBouncer in
  transaction mode a server-side cursor opened outside a transaction vanishes
  when its statement ends ("cursor ... does not exist" a chunk later); inside
  one, PgBouncer keeps the client on one server connection until it ends.
* The last line is a trailer, ``# end of export: N order lines``. The status
  (200) is sent before the first row, so an export cut short by a lost
  connection can only be told from a whole one by its end: no trailer, or a
  count that does not match, means the file is incomplete. Such a cut is
  logged once, at WARNING, and the stream ends there.

Under ASGI, Django reads a synchronous streaming body completely before sending
it, so that view keeps memory flat under WSGI (gunicorn, runserver); under ASGI
(uvicorn), export_csv_async() streams the same blocks through an async iterator.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import AsyncIterator, Iterator
from itertools import chain

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, StreamingHttpResponse
from django.views.decorators.http import require_safe

from apps.orders.models import OrderLine
from apps.web.unavailable import one_line
from backends.errors import transient_cause

logger = logging.getLogger(__name__)

CHUNK_SIZE = 2_000  # rows fetched from the server-side cursor at a time
ROWS_PER_BLOCK = 500  # CSV rows per piece of the response
TRAILER = "# end of export: {count} order lines\r\n"  # \r\n like the csv module's rows

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
    """The header, blocks of ROWS_PER_BLOCK rows, then the trailer.

    The query runs before the header is yielded: the first next() tells
    whether the database could be read. The last block and the trailer go
    out once the transaction has ended well, so a trailer vouches for the
    whole file. A connection lost after the header ends the file early,
    without a trailer.
    """
    writer = csv.writer(_Line())
    count = 0
    header_sent = False
    try:
        with transaction.atomic():
            rows = order_rows()
            try:
                first = next(rows, None)  # runs the query
                header_sent = True
                yield writer.writerow(HEADER)
                block = []
                for number, created_at, status, customer, sku, name, quantity, unit_price in chain(
                    [first] if first is not None else [], rows
                ):
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
                        count += len(block)
                        yield "".join(block)
                        block = []
                count += len(block)
            finally:
                # A client that disconnects closes this generator; closing the rows closes
                # the server-side cursor now, in this thread, before the transaction ends.
                rows.close()
    # Not only DatabaseError: closing a server-side cursor on a lost connection
    # raises the driver's own error, which Django does not wrap.
    except Exception as exc:
        cause = transient_cause(exc)
        if not header_sent or cause is None:
            raise  # before the header: the view answers 503; a bug stays a bug
        # The status went out with the header: all that is left is to stop
        # short of the trailer (an exception would only add a traceback).
        logger.warning("CSV export cut short after %d order lines: %s (%s)", count, cause, one_line(exc))
        return
    yield "".join(block) + TRAILER.format(count=count)


class OrderExport:
    """csv_blocks() with its query already run, for a StreamingHttpResponse.

    Creating one reads the first chunk, so a database error is raised in the
    view (and answered with a 503) rather than after the status went out.
    Django calls close() when the response is finished or the client went
    away; it ends the cursor and the transaction in the thread that began them.
    """

    def __init__(self) -> None:
        self._blocks = csv_blocks()
        self._header = next(self._blocks)

    def __iter__(self) -> Iterator[str]:
        yield self._header
        # Not `yield from`: a finalizer closing this generator in another thread
        # must not reach the cursor; close() does that, in the request's thread.
        for block in self._blocks:  # noqa: UP028
            yield block

    def close(self) -> None:
        self._blocks.close()


class AsyncOrderExport:
    """OrderExport for ASGI: the same blocks, sent as they are read.

    Django's ASGI handler reads a synchronous streaming body whole before it
    sends anything; an async iterator it sends a piece at a time. Each block
    still comes from csv_blocks(), through a thread-sensitive sync_to_async:
    the generator, its transaction and its server-side cursor stay on the
    request's thread, with that thread's connection, from the first block to
    close(). Create one with ``await AsyncOrderExport.start()``, which reads
    the first chunk as OrderExport() does.
    """

    def __init__(self, blocks: Iterator[str], header: str) -> None:
        self._blocks = blocks
        self._header = header

    @classmethod
    async def start(cls) -> AsyncOrderExport:
        blocks = csv_blocks()
        try:
            header = await sync_to_async(next, thread_sensitive=True)(blocks)
        except asyncio.CancelledError:
            # The client went away while the first chunk was read: no response
            # will close the generator, so close it here, on the request's
            # thread, once next() there is done (a finalizer would do it in
            # whichever thread collects it).
            await sync_to_async(blocks.close, thread_sensitive=True)()
            raise
        return cls(blocks, header)

    async def __aiter__(self) -> AsyncIterator[str]:
        yield self._header
        next_block = sync_to_async(next, thread_sensitive=True)
        while (block := await next_block(self._blocks, None)) is not None:
            yield block

    def close(self) -> None:
        # Django calls it through sync_to_async once the response is over or
        # the client went away: on the request's thread.
        self._blocks.close()


@require_safe
async def export_csv_async(request: HttpRequest) -> StreamingHttpResponse:
    """/orders/export.csv for ASGI servers: streamed, with the same 503 before the first byte."""
    response = StreamingHttpResponse(await AsyncOrderExport.start(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="orders.csv"'
    return response
