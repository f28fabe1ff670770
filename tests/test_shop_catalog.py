"""The catalog: pages, JSON endpoints, the slow-external-call views, the leaky view, async."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.signals import request_finished
from django.db import connections
from django.forms import ModelChoiceField
from django.test import AsyncClient

from apps.catalog.models import Product
from tests.test_shop_support import Shop, make_product, make_shop, private_details

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop() -> Shop:
    return make_shop()


def names_on(response) -> list[str]:
    return [product.name for product in response.context["page"]]


def assert_no_private_details(shop: Shop, content: bytes) -> None:
    text = content.decode()
    for secret in private_details(shop):
        assert secret not in text


# Pages -----------------------------------------------------------------------------


def test_home_page_links_to_every_page_and_the_pool_dashboard(client, shop):
    response = client.get("/")
    assert response.status_code == 200
    for link in [
        "/products/",
        f"/products/{shop.novel.pk}/",
        "/orders/new/",
        "/reports/sales/",
        "/orders/export.csv",
        "/pool/",
        "/api/orm/products/",
        f"/api/orm/products/{shop.novel.pk}/with-external-call/",
        f"/api/raw/products/{shop.novel.pk}/with-external-call/",
        "/api/raw/leaky/",
        f"/api/async/products/{shop.novel.pk}/summary/",
        "/api/raw/reports/sales/",
    ]:
        assert f'href="{link}' in response.content.decode(), link
    assert "anti-pattern" in response.content.decode()


def test_home_page_without_products_says_how_to_seed(client):
    response = client.get("/")
    assert response.status_code == 200
    assert "manage.py seed" in response.content.decode()


def test_pages_share_the_base_template_and_its_stylesheet(client, shop):
    response = client.get("/products/")
    assert [t.name for t in response.templates][:2] == ["catalog/product_list.html", "base.html"]
    assert "storefront/site.css" in response.content.decode()


def test_product_list_shows_products_by_name(client, shop):
    response = client.get("/products/")
    assert response.status_code == 200
    assert names_on(response) == ["A Long Novel", "Whistling Kettle", "World Atlas"]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("category=books", ["A Long Novel", "World Atlas"]),
        ("category=kitchen", ["Whistling Kettle"]),
        ("q=kettle", ["Whistling Kettle"]),
        ("q=book-2", ["World Atlas"]),  # an exact SKU, any case
        ("min_price=20", ["Whistling Kettle", "World Atlas"]),
        ("max_price=25", ["A Long Novel", "Whistling Kettle"]),
        ("min_price=20&max_price=30", ["Whistling Kettle"]),
        ("category=books&q=atlas&max_price=40.00", ["World Atlas"]),
        ("q=nothing-like-this", []),
        ("q=", ["A Long Novel", "Whistling Kettle", "World Atlas"]),
    ],
)
def test_product_list_filters(client, shop, query, expected):
    response = client.get(f"/products/?{query}")
    assert response.status_code == 200
    assert names_on(response) == expected


def test_product_list_paginates_and_keeps_the_filters_in_the_links(client, shop):
    for i in range(25):
        make_product(shop.kitchen, f"MUG-{i:02}", f"Mug {i:02}", "5.00", stock=1)

    first = client.get("/products/?category=kitchen")
    assert len(first.context["page"]) == 20
    assert 'href="?category=kitchen&amp;page=2"' in first.content.decode()

    second = client.get("/products/?category=kitchen&page=2")
    assert names_on(second) == ["Mug 20", "Mug 21", "Mug 22", "Mug 23", "Mug 24", "Whistling Kettle"]
    assert "Page 2 of 2" in second.content.decode()


def test_product_list_page_past_the_end_is_not_found(client, shop):
    response = client.get("/products/?page=2")
    assert response.status_code == 404
    assert "There is no page 2" in response.content.decode()


@pytest.mark.parametrize(
    "query, message",
    [
        ("page=x", "Enter a whole number"),
        ("page=0", "greater than or equal to 1"),
        ("min_price=abc", "Enter a number"),
        ("max_price=-1", "greater than or equal to 0"),
        ("min_price=NaN", "Enter a number"),
        ("category=no-such-category", "Select a valid choice"),
        ("min_price=30&max_price=10", "minimum price is above the maximum"),
    ],
)
def test_product_list_malformed_filters_are_a_bad_request(client, shop, query, message):
    response = client.get(f"/products/?{query}")
    assert response.status_code == 400
    assert message in response.content.decode()


def test_product_detail_shows_the_reviews_with_short_names_only(client, shop):
    response = client.get(f"/products/{shop.novel.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "A Long Novel" in content
    assert "2 reviews, 4.0 out of 5" in content
    assert "Gripping" in content and "Too long" in content
    assert "Ada L." in content and "Alan T." in content
    assert_no_private_details(shop, response.content)


def test_product_without_reviews_says_so(client, shop):
    response = client.get(f"/products/{shop.kettle.pk}/")
    assert "No reviews yet" in response.content.decode()


@pytest.mark.parametrize("path", ["/products/999999/", "/products/99999999999999999999999/"])
def test_unknown_product_page_is_not_found(client, shop, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_pages_refuse_writes(client, shop):
    assert client.post("/products/").status_code == 405
    assert client.delete(f"/products/{shop.novel.pk}/").status_code == 405


# JSON: ORM ---------------------------------------------------------------------------------


def test_api_product_list_filters_and_pages(client, shop):
    response = client.get("/api/orm/products/?category=books&page_size=1&page=2")
    assert response.status_code == 200
    data = response.json()
    assert (data["count"], data["page"], data["pages"]) == (2, 2, 2)
    assert data["results"] == [
        {
            "id": shop.atlas.pk,
            "sku": "BOOK-2",
            "name": "World Atlas",
            "category": {"slug": "books", "name": "Books"},
            "price": "40.00",
            "stock": 3,
            "url": f"/products/{shop.atlas.pk}/",
        }
    ]


@pytest.mark.parametrize(
    "query, field",
    [
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page=abc", "page"),
        ("min_price=1e999", "min_price"),
        ("category=%27%3B%20DROP%20TABLE", "category"),
        ("min_price=9&max_price=1", "__all__"),
    ],
)
def test_api_product_list_bad_filters_are_a_json_bad_request(client, shop, query, field):
    response = client.get(f"/api/orm/products/?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid filter."
    assert field in response.json()["fields"]


def test_api_product_list_page_past_the_end_is_json_not_found(client, shop):
    response = client.get("/api/orm/products/?page=9")
    assert response.status_code == 404
    assert "no page 9" in response.json()["error"]


def test_api_product_detail_has_the_reviews_without_private_details(client, shop):
    response = client.get(f"/api/orm/products/{shop.novel.pk}/")
    assert response.status_code == 200
    data = response.json()
    assert data["name"] == "A Long Novel"
    assert data["price"] == "12.50"
    assert data["reviews"]["count"] == 2
    assert data["reviews"]["average"] == 4.0
    assert sorted(review["author"] for review in data["reviews"]["latest"]) == ["Ada L.", "Alan T."]
    assert_no_private_details(shop, response.content)


UNKNOWN_PRODUCT_ENDPOINTS = [
    "/api/orm/products/{id}/",
    "/api/orm/products/{id}/with-external-call/",
    "/api/raw/products/{id}/with-external-call/",
    "/api/async/products/{id}/summary/",
]


@pytest.mark.parametrize("endpoint", UNKNOWN_PRODUCT_ENDPOINTS)
@pytest.mark.parametrize("product_id", ["0", "424242", "99999999999999999999999"])
def test_unknown_product_is_json_not_found(client, shop, endpoint, product_id):
    response = client.get(endpoint.format(id=product_id))
    assert response.status_code == 404
    assert response.json() == {"error": f"There is no product {product_id}."}


@pytest.mark.parametrize("endpoint", [*UNKNOWN_PRODUCT_ENDPOINTS, "/api/orm/products/", "/api/raw/leaky/"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_read_only_endpoints_refuse_other_methods_in_json(client, shop, endpoint, method):
    response = getattr(client, method)(endpoint.format(id=shop.novel.pk))
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert "Method not allowed" in response.json()["error"]


@pytest.mark.parametrize("path", ["/api/no-such-thing/", "/api/orm/products/abc/"])
def test_unknown_api_url_is_json_not_found(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]


# JSON: a query, then a slow external call ------------------------------------------------------


@pytest.mark.parametrize("flavour", ["orm", "raw"])
def test_external_call_views_answer_with_the_product_and_the_service_reply(client, shop, settings, flavour):
    settings.EXTERNAL_LATENCY_MS = 1
    response = client.get(f"/api/{flavour}/products/{shop.kettle.pk}/with-external-call/")
    assert response.status_code == 200
    data = response.json()
    assert data["product"]["sku"] == "KIT-1"
    assert data["product"]["category"] == {"slug": "kitchen", "name": "Kitchen"}
    assert data["product"]["price"] == "25.00"
    assert data["external"]["service"] == "shipping-estimate"
    assert data["external"]["latency_ms"] == 1


def end_of_request() -> None:
    request_finished.send(sender=None)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("flavour", ["orm", "raw"])
def test_external_call_views_wait_without_a_connection_when_release_is_on(client, settings, flavour):
    settings.EXTERNAL_LATENCY_MS = 1
    shop = make_shop()
    response = client.get(f"/api/{flavour}/products/{shop.kettle.pk}/with-external-call/")
    held = response.json()["external"]["db_connection_held_during_call"]
    # Stock Django (DB_RELEASE=request) keeps the connection for the whole request.
    assert held is (settings.DB_RELEASE == "request")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("flavour", ["orm", "raw"])
def test_external_call_views_call_the_service_without_a_connection(client, settings, monkeypatch, flavour):
    from apps.catalog import external
    from backends.testing import releases_connection

    settings.EXTERNAL_LATENCY_MS = 0
    shop = make_shop()
    # The service stand-in fails the request if the view still holds its connection.
    monkeypatch.setattr(external, "shipping_estimate", releases_connection(external.shipping_estimate))
    if settings.DB_RELEASE == "request":  # stock Django: held to the end of the request
        with pytest.raises(AssertionError, match="checked out here"):
            client.get(f"/api/{flavour}/products/{shop.kettle.pk}/with-external-call/")
        end_of_request()
    else:
        response = client.get(f"/api/{flavour}/products/{shop.kettle.pk}/with-external-call/")
        assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_leaky_view_holds_its_connection_through_the_call_and_until_the_request_ends(client, settings):
    settings.EXTERNAL_LATENCY_MS = 1
    make_shop()
    try:
        response = client.get("/api/raw/leaky/")
        data = response.json()
        assert response.status_code == 200
        assert data["anti_pattern"] is True
        assert data["products"] == 3
        assert data["external"]["db_connection_held_during_call"] is True
        assert connections["default"].connection is not None, "the open cursor still holds it"
    finally:
        end_of_request()
    assert connections["default"].connection is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(settings.DB_RELEASE != "cursor", reason="stock Django holds the connection all request")
def test_product_list_renders_the_category_choices_without_a_connection(client, monkeypatch):
    make_shop()
    connections["default"].close()
    held_while_rendering: list[bool] = []
    label = ModelChoiceField.label_from_instance

    def label_and_look(field, obj):
        held_while_rendering.append(connections["default"].connection is not None)
        return label(field, obj)

    monkeypatch.setattr(ModelChoiceField, "label_from_instance", label_and_look)
    response = client.get("/products/")

    assert response.status_code == 200
    assert 'value="kitchen"' in response.content.decode()
    # Read in one query first, not through a server-side cursor open while the <select> renders.
    assert held_while_rendering == [False, False]


# Async ---------------------------------------------------------------------------------------


def test_async_summary_through_the_async_client(shop):
    # async_to_sync runs the async ORM's database work in this thread, inside the test's transaction.
    response = async_to_sync(AsyncClient().get)(f"/api/async/products/{shop.novel.pk}/summary/")
    assert response.status_code == 200
    data = response.json()
    assert (data["name"], data["reviews"], data["average_rating"]) == ("A Long Novel", 2, 4.0)


def test_async_summary_of_a_product_without_reviews(client, shop):
    response = client.get(f"/api/async/products/{shop.kettle.pk}/summary/")
    assert response.json()["reviews"] == 0
    assert response.json()["average_rating"] is None


def test_async_summary_unknown_product_through_the_async_client(shop):
    response = async_to_sync(AsyncClient().get)("/api/async/products/424242/summary/")
    assert response.status_code == 404
    assert Product.objects.count() == 3
