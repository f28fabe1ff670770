"""The catalog's JSON endpoints: ORM, raw SQL, the slow-external-call pattern, and async.

The ``with-external-call`` pair is the pattern the release engines exist for: a
query, then a wait on another service. Each reports whether a database
connection sat checked out during the wait (see apps/catalog/external.py).
"""

from asgiref.sync import sync_to_async
from django import forms
from django.db import connection
from django.db.models import Avg
from django.http import HttpRequest, JsonResponse

from apps.catalog import external
from apps.catalog.forms import ProductFilterForm
from apps.catalog.models import Product
from apps.catalog.queries import (
    PRODUCT_SQL,
    latest_reviews,
    listed_products,
    page_of,
    product_json,
    product_row_json,
    review_json,
    review_stats,
)
from apps.web.http import ApiError, form_errors, json_api
from backends.release import hold_connection


class ApiProductFilterForm(ProductFilterForm):
    page_size = forms.IntegerField(required=False, min_value=1, max_value=100)


def get_product(product_id: int) -> Product:
    try:
        return Product.objects.select_related("category").get(pk=product_id)
    except Product.DoesNotExist:
        raise ApiError(404, f"There is no product {product_id}.") from None


async def aget_product(product_id: int) -> Product:
    try:
        return await Product.objects.select_related("category").aget(pk=product_id)
    except Product.DoesNotExist:
        raise ApiError(404, f"There is no product {product_id}.") from None


# ORM ------------------------------------------------------------------------------


@json_api("GET", "HEAD")
def product_list(request: HttpRequest) -> JsonResponse:
    form = ApiProductFilterForm(request.GET)
    if not form.is_valid():
        raise ApiError(400, "Invalid filter.", fields=form_errors(form))
    data = form.cleaned_data
    page = page_of(form.filter(listed_products()), data["page"], per_page=data["page_size"] or 20)
    return JsonResponse(
        {
            "count": page.paginator.count,
            "page": page.number,
            "pages": page.paginator.num_pages,
            "results": [product_json(product) for product in page],
        }
    )


@json_api("GET", "HEAD")
def product_detail(request: HttpRequest, product_id: int) -> JsonResponse:
    product = get_product(product_id)
    stats = review_stats(product)
    return JsonResponse(
        {
            **product_json(product),
            "reviews": {
                "count": stats["count"],
                "average": round(stats["average"], 2) if stats["average"] is not None else None,
                "latest": [review_json(review) for review in latest_reviews(product)],
            },
        }
    )


@json_api("GET", "HEAD")
def orm_product_with_external_call(request: HttpRequest, product_id: int) -> JsonResponse:
    product = get_product(product_id)  # the ORM closes its cursor once the row is read
    return JsonResponse({"product": product_json(product), "external": external.call_with_report(product.pk)})


# Raw SQL ------------------------------------------------------------------------------


@json_api("GET", "HEAD")
def raw_product_with_external_call(request: HttpRequest, product_id: int) -> JsonResponse:
    # The right way: the cursor is closed when the block ends, before the slow call.
    with connection.cursor() as cursor:
        cursor.execute(PRODUCT_SQL, [product_id])
        row = cursor.fetchone()
    if row is None:
        raise ApiError(404, f"There is no product {product_id}.")
    return JsonResponse({"product": product_row_json(row), "external": external.call_with_report(row[0])})


@json_api("GET", "HEAD")
def raw_leaky(request: HttpRequest) -> JsonResponse:
    """ANTI-PATTERN, on purpose: a raw cursor that is opened and never closed.

    An open cursor may still be read, so no engine can hand its connection to
    anyone else: the connection stays checked out through the slow call below
    until the request ends, exactly as in stock Django. Connection release
    cannot fix this; `with connection.cursor() as cursor:` does (see
    raw_product_with_external_call). DB_LEAK_DIAGNOSTICS=1 logs where such a
    cursor was opened.
    """
    cursor = connection.cursor()  # never closed: this is the bug being demonstrated
    cursor.execute("SELECT count(*) FROM catalog_product")
    (products,) = cursor.fetchone()
    return JsonResponse(
        {
            "anti_pattern": True,
            "warning": (
                "This endpoint leaves a raw cursor open on purpose, so its database connection stays "
                "checked out until the request ends, even with connection release. Close cursors: "
                "use `with connection.cursor() as cursor:`."
            ),
            "products": products,
            "external": external.call_with_report(0),
        }
    )


# Async (ASGI) ----------------------------------------------------------------------------


@json_api("GET", "HEAD")
async def async_product_summary(request: HttpRequest, product_id: int) -> JsonResponse:
    """The async ORM: no thread is blocked while the queries run (under ASGI)."""
    product = await aget_product(product_id)
    reviews = await product.reviews.acount()
    average = (await product.reviews.aaggregate(average=Avg("rating")))["average"]
    return JsonResponse(
        {
            **product_json(product),
            "reviews": reviews,
            "average_rating": round(average, 2) if average is not None else None,
        }
    )


@json_api("GET", "HEAD")
async def async_product_with_external_call(request: HttpRequest, product_id: int) -> JsonResponse:
    """The `async` scenario: an async ORM read, an awaited external call, a second read.

    Under ASGI nothing bounds how many of these are in flight but the clients.
    Stock Django keeps the first read's connection through the awaited call and
    the second read, so its pool must cover every request in flight; release
    gives it back after each read.
    """
    product = await aget_product(product_id)
    estimate = await external.acall_with_report(product.pk)
    reviews = await product.reviews.acount()
    return JsonResponse({"product": product_json(product), "reviews": reviews, "external": estimate})


# Session state across awaits (hold_connection) ---------------------------------------------

# How long any one read of the page below may run.
READ_TIME_LIMIT = "2s"


def session_time_limit() -> tuple[int, str]:
    """This thread's server session and its statement_timeout."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('statement_timeout')")
        return cursor.fetchone()


def limit_session_reads(limit: str) -> None:
    with connection.cursor() as cursor:
        # set_config(..., false): for the session, not only a transaction.
        cursor.execute("SELECT set_config('statement_timeout', %s, false)", [limit])


@json_api("GET", "HEAD")
async def async_product_with_time_limit(request: HttpRequest, product_id: int) -> JsonResponse:
    """The `async` view's reads under one statement_timeout, set once for the session.

    A transaction (SET LOCAL) would stay open through the awaited call. Instead
    hold_connection() keeps one session for the block, across the await; when
    the block ends the session is reset (DISCARD ALL) before the connection
    goes back, so no later borrower inherits the timeout. The answer says what
    the session was like when the block began and after the call.
    """
    async with hold_connection():
        pid, found = await sync_to_async(session_time_limit)()
        await sync_to_async(limit_session_reads)(READ_TIME_LIMIT)
        product = await aget_product(product_id)
        estimate = await external.acall_with_report(product.pk)
        reviews = await product.reviews.acount()
        pid_after, limit = await sync_to_async(session_time_limit)()
    return JsonResponse(
        {
            "product": product_json(product),
            "reviews": reviews,
            "external": estimate,
            "session": {
                "backend_pid": pid,
                "same_session_after_call": pid_after == pid,
                "statement_timeout_found": found,
                "statement_timeout_after_call": limit,
            },
        }
    )
