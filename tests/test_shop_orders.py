"""Placing orders (JSON API and HTML form), never overselling, and the streamed CSV export."""

from __future__ import annotations

import csv
import io
import json
import threading

import pytest
from django.db import connections
from django.test import Client

from apps.orders.models import Order, OrderLine
from tests.test_shop_support import (
    Shop,
    exports_complete,
    make_order,
    make_product,
    make_shop,
    private_details,
    stock_of,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop() -> Shop:
    return make_shop()


def post_order(client: Client, body: object, content_type: str = "application/json"):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/api/orders/", data, content_type=content_type)


# The JSON API ----------------------------------------------------------------------------


def test_placing_an_order_takes_the_quantities_out_of_stock(client, shop):
    response = post_order(
        client,
        {
            "customer": shop.ada.pk,
            "lines": [{"product": shop.novel.pk, "quantity": 2}, {"product": shop.kettle.pk, "quantity": 5}],
        },
    )

    assert response.status_code == 201
    data = response.json()
    assert data["number"].startswith("W-")
    assert data["status"] == "paid"
    assert data["total"] == "150.00"  # 2 × 12.50 + 5 × 25.00
    assert [(line["sku"], line["quantity"], line["unit_price"]) for line in data["lines"]] == [
        ("BOOK-1", 2, "12.50"),
        ("KIT-1", 5, "25.00"),
    ]
    assert stock_of(shop.novel, shop.kettle) == [8, 0]
    order = Order.objects.get(number=data["number"])
    assert order.customer == shop.ada
    assert data["url"] == f"/orders/{order.number}/"


def test_the_same_product_twice_is_one_line(client, shop):
    response = post_order(
        client,
        {
            "customer": shop.ada.pk,
            "lines": [{"product": shop.novel.pk, "quantity": 1}, {"product": shop.novel.pk, "quantity": 2}],
        },
    )
    assert response.status_code == 201
    assert [(line["sku"], line["quantity"]) for line in response.json()["lines"]] == [("BOOK-1", 3)]
    assert stock_of(shop.novel) == [7]


def test_the_order_keeps_the_price_it_was_placed_at(client, shop):
    number = post_order(
        client, {"customer": shop.ada.pk, "lines": [{"product": shop.novel.pk, "quantity": 1}]}
    ).json()["number"]
    shop.novel.price = "99.99"
    shop.novel.save()
    assert str(OrderLine.objects.get(order__number=number).unit_price) == "12.50"


def valid_body(shop: Shop) -> dict:
    return {"customer": shop.ada.pk, "lines": [{"product": shop.novel.pk, "quantity": 1}]}


BAD_ORDERS = {
    # name: (body or a function of the shop giving it, expected status, a piece of the message)
    "not JSON": ("{'customer': 1", 400, "not valid JSON"),
    "not UTF-8": (b"\xff\xfe{}", 400, "not valid JSON"),
    "a list": ("[]", 400, "Send an object"),
    "a number too long to read": ('{"customer": 1' + "0" * 5000 + "}", 400, "not valid JSON"),
    "nested too deep": ("[" * 100_000 + "]" * 100_000, 400, "not valid JSON"),
    "a number": ("42", 400, "Send an object"),
    "no lines": (lambda s: {"customer": s.ada.pk}, 400, "non-empty list"),
    "empty lines": (lambda s: {"customer": s.ada.pk, "lines": []}, 400, "non-empty list"),
    "lines not a list": (lambda s: {"customer": s.ada.pk, "lines": {"product": 1}}, 400, "non-empty list"),
    "line not an object": (lambda s: {"customer": s.ada.pk, "lines": [s.novel.pk]}, 400, "lines[0] must be"),
    "line with extra field": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": s.novel.pk, "quantity": 1, "price": 0}]},
        400,
        "lines[0] must be",
    ),
    "unknown field": (lambda s: {**valid_body(s), "discount": 100}, 400, "Unknown field 'discount'"),
    "no customer": (lambda s: {"lines": valid_body(s)["lines"]}, 400, "customer must be"),
    "customer as a string": (lambda s: {**valid_body(s), "customer": str(s.ada.pk)}, 400, "customer must be"),
    "customer true": (lambda s: {**valid_body(s), "customer": True}, 400, "customer must be"),
    "customer beyond bigint": (lambda s: {**valid_body(s), "customer": 2**63}, 400, "customer must be"),
    "unknown customer": (lambda s: {**valid_body(s), "customer": 424242}, 400, "no customer 424242"),
    "unknown product": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": 424242, "quantity": 1}]},
        400,
        "no product 424242",
    ),
    "one known and one unknown product": (
        lambda s: {
            "customer": s.ada.pk,
            "lines": [{"product": s.novel.pk, "quantity": 1}, {"product": 424242, "quantity": 1}],
        },
        400,
        "no product 424242",
    ),
    "zero quantity": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": s.novel.pk, "quantity": 0}]},
        400,
        "lines[0].quantity must be",
    ),
    "negative quantity": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": s.novel.pk, "quantity": -3}]},
        400,
        "lines[0].quantity must be",
    ),
    "fractional quantity": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": s.novel.pk, "quantity": 1.5}]},
        400,
        "lines[0].quantity must be",
    ),
    "huge quantity": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": s.novel.pk, "quantity": 10**6}]},
        400,
        "At most 1000",
    ),
    "too many lines": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": i, "quantity": 1} for i in range(1, 60)]},
        400,
        "at most 50 lines",
    ),
    "more than in stock": (
        lambda s: {"customer": s.ada.pk, "lines": [{"product": s.atlas.pk, "quantity": 4}]},
        409,
        "Not enough stock",
    ),
    "one line fine, one out of stock": (
        lambda s: {
            "customer": s.ada.pk,
            "lines": [{"product": s.novel.pk, "quantity": 10}, {"product": s.kettle.pk, "quantity": 6}],
        },
        409,
        "Not enough stock",
    ),
}


@pytest.mark.parametrize("case", BAD_ORDERS)
def test_a_bad_order_is_refused_in_json_and_changes_nothing(client, shop, case):
    body, status, message = BAD_ORDERS[case]
    body = body(shop) if callable(body) else body

    response = post_order(client, body)

    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    assert Order.objects.count() == 0
    assert OrderLine.objects.count() == 0
    assert stock_of(shop.novel, shop.atlas, shop.kettle) == [10, 3, 5]


def test_out_of_stock_says_what_is_short(client, shop):
    response = post_order(
        client, {"customer": shop.ada.pk, "lines": [{"product": shop.atlas.pk, "quantity": 4}]}
    )
    assert response.json()["lines"] == [{"product": shop.atlas.pk, "requested": 4, "in_stock": 3}]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_an_order_not_sent_as_json_is_unsupported_media_type(client, shop, content_type):
    response = client.post("/api/orders/", json.dumps(valid_body(shop)), content_type=content_type)
    assert response.status_code == 415
    assert Order.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_the_order_api_takes_only_post(client, shop, method):
    response = getattr(client, method)("/api/orders/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["allowed"] == ["POST"]


def test_the_order_api_needs_no_csrf_token(shop):
    client = Client(enforce_csrf_checks=True)
    assert post_order(client, valid_body(shop)).status_code == 201


# The HTML form ---------------------------------------------------------------------------------


def csrf_client() -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.get("/orders/new/")
    return client, client.cookies["csrftoken"].value


def test_order_form_shows_the_product_from_the_link(client, shop):
    response = client.get(f"/orders/new/?product={shop.novel.pk}")
    assert response.status_code == 200
    content = response.content.decode()
    assert "csrfmiddlewaretoken" in content
    assert "A Long Novel" in content and "10 in stock" in content


@pytest.mark.parametrize(
    "query",
    ["product=abc", "product=-1", "product=99999999999999999999999", "product=٣", "product=" + "9" * 5000],
)
def test_order_form_ignores_a_nonsense_product_link(client, shop, query):
    response = client.get(f"/orders/new/?{query}")
    assert response.status_code == 200
    assert "in stock" not in response.content.decode()


def test_order_form_places_the_order_and_redirects_to_it(shop):
    client, token = csrf_client()
    response = client.post(
        "/orders/new/",
        {"customer": shop.alan.pk, "product": shop.kettle.pk, "quantity": 2, "csrfmiddlewaretoken": token},
    )
    order = Order.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/orders/{order.number}/"
    assert stock_of(shop.kettle) == [3]

    page = client.get(response["Location"])
    assert page.status_code == 200
    content = page.content.decode()
    assert "KIT-1" in content and "50.00" in content
    for secret in private_details(shop):
        assert secret not in content


def test_order_form_without_the_csrf_token_is_forbidden_and_changes_nothing(shop):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/orders/new/", {"customer": shop.ada.pk, "product": shop.novel.pk, "quantity": 1})
    assert response.status_code == 403
    assert Order.objects.count() == 0
    assert stock_of(shop.novel) == [10]


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"customer": "", "product": "", "quantity": ""}, 400, "This field is required"),
        ({"customer": "x", "product": "1", "quantity": "1"}, 400, "Enter a whole number"),
        ({"customer": "1", "product": "1", "quantity": "0"}, 400, "greater than or equal to 1"),
        ({"customer": "424242", "product": "{novel}", "quantity": "1"}, 400, "no customer 424242"),
        ({"customer": "{ada}", "product": "424242", "quantity": "1"}, 400, "no product 424242"),
        ({"customer": "{ada}", "product": "{atlas}", "quantity": "4"}, 409, "Not enough stock"),
    ],
)
def test_order_form_refuses_bad_input_and_changes_nothing(shop, form, status, message):
    client, token = csrf_client()
    ids = {"novel": shop.novel.pk, "atlas": shop.atlas.pk, "ada": shop.ada.pk}
    data = {key: value.format(**ids) for key, value in form.items()}

    response = client.post("/orders/new/", {**data, "csrfmiddlewaretoken": token})

    assert response.status_code == status
    assert message in response.content.decode()
    assert Order.objects.count() == 0
    assert stock_of(shop.novel, shop.atlas, shop.kettle) == [10, 3, 5]


def test_order_form_refuses_other_methods(client):
    assert client.put("/orders/new/").status_code == 405


@pytest.mark.parametrize("number", ["W-NOSUCHORDER", "%00", "S-1%20OR%201=1", "x" * 500])
def test_unknown_order_page_is_not_found(client, number):
    assert client.get(f"/orders/{number}/").status_code == 404


# Never overselling ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_orders_never_sell_more_than_the_stock():
    shop = make_shop()
    product = make_product(shop.kitchen, "LAST-1", "Last Few Lamps", "30.00", stock=12)
    threads, attempts_each = 4, 6  # 24 attempts at 1 item for 12 in stock
    start = threading.Barrier(threads)
    statuses: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def buyer() -> None:
        client = Client()
        try:
            start.wait()
            for _ in range(attempts_each):
                response = post_order(
                    client, {"customer": shop.ada.pk, "lines": [{"product": product.pk, "quantity": 1}]}
                )
                with lock:
                    statuses.append(response.status_code)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=buyer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert not errors
    assert sorted(set(statuses)) == [201, 409]
    assert statuses.count(201) == 12
    assert statuses.count(409) == threads * attempts_each - 12
    assert stock_of(product) == [0]
    sold = sum(OrderLine.objects.filter(product=product).values_list("quantity", flat=True))
    assert sold == 12
    assert Order.objects.count() == 12


# CSV export ------------------------------------------------------------------------------------------


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_export_has_every_order_line(client, shop):
    first = make_order(shop.ada, [(shop.novel, 2), (shop.kettle, 1)], number="S-1")
    second = make_order(shop.alan, [(shop.atlas, 3)], number="S-2", status="cancelled")

    response = client.get("/orders/export.csv")

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="orders.csv"'
    rows = read_csv(response)
    assert rows[0] == [
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
    assert [row[:1] + row[2:] for row in rows[1:4]] == [
        ["S-1", "paid", str(shop.ada.pk), "BOOK-1", "A Long Novel", "2", "12.50", "25.00"],
        ["S-1", "paid", str(shop.ada.pk), "KIT-1", "Whistling Kettle", "1", "25.00", "25.00"],
        ["S-2", "cancelled", str(shop.alan.pk), "BOOK-2", "World Atlas", "3", "40.00", "120.00"],
    ]
    assert rows[1][1] == first.created_at.isoformat()
    assert rows[3][1] == second.created_at.isoformat()
    assert rows[4] == ["# end of export: 3 order lines"]
    assert len(rows) == 5


def test_csv_export_shows_no_private_customer_details(client, shop):
    make_order(shop.ada, [(shop.novel, 1)], number="S-1")
    content = b"".join(client.get("/orders/export.csv").streaming_content).decode()
    for secret in private_details(shop):
        assert secret not in content


def test_csv_export_of_no_orders_is_the_header_and_the_trailer(client):
    assert read_csv(client.get("/orders/export.csv"))[1:] == [["# end of export: 0 order lines"]]


def test_csv_export_streams_in_blocks(client, shop, monkeypatch):
    monkeypatch.setattr("apps.orders.export.ROWS_PER_BLOCK", 2)
    for i in range(5):
        make_order(shop.ada, [(shop.novel, 1)], number=f"S-{i}")
    blocks = list(client.get("/orders/export.csv").streaming_content)
    # The header, then the rows; the trailer ends the last block.
    assert [block.count(b"\n") for block in blocks] == [1, 2, 2, 2]
    assert blocks[-1].endswith(b"# end of export: 5 order lines\r\n")


@pytest.mark.django_db(transaction=True)
def test_csv_export_gives_the_connection_back_when_the_client_goes_away(client, monkeypatch):
    monkeypatch.setattr("apps.orders.export.ROWS_PER_BLOCK", 2)
    shop = make_shop()
    for i in range(5):
        make_order(shop.ada, [(shop.novel, 1)], number=f"S-{i}")
    response = client.get("/orders/export.csv")
    blocks = iter(response.streaming_content)
    next(blocks)  # the header
    next(blocks)  # two rows: the server-side cursor is open now
    assert connections["default"].connection is not None

    response.close()  # what the server does when the client disconnects

    assert connections["default"].connection is None


def test_csv_export_refuses_writes(client):
    assert client.post("/orders/export.csv").status_code == 405


def test_the_load_test_tells_a_whole_export_from_one_cut_short(client, shop):
    for i in range(3):
        make_order(shop.ada, [(shop.novel, 1), (shop.kettle, 2)], number=f"S-{i}")
    whole = b"".join(client.get("/orders/export.csv").streaming_content).decode()
    lines = whole.splitlines(keepends=True)

    cut_before_the_trailer = whole[: whole.index("# end")]
    rows_lost_in_the_middle = "".join(lines[:3] + lines[-1:])
    assert exports_complete([whole, cut_before_the_trailer, rows_lost_in_the_middle]) == [True, False, False]
