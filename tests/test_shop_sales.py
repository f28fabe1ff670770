"""The raw-SQL sales report, as a page and as JSON."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.test_shop_support import Shop, make_order, make_shop

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop() -> Shop:
    shop = make_shop()
    make_order(shop.ada, [(shop.novel, 2), (shop.kettle, 1)], number="S-1", days_ago=1)  # 25 + 25
    make_order(shop.alan, [(shop.novel, 1)], number="S-2", days_ago=3)  # 12.50
    make_order(shop.alan, [(shop.atlas, 1)], number="S-3", days_ago=5, status="cancelled")  # not a sale
    make_order(shop.ada, [(shop.atlas, 2)], number="S-4", days_ago=60)  # 80, outside 30 days
    return shop


def test_report_of_the_last_30_days_by_category_and_product(client, shop):
    response = client.get("/api/raw/reports/sales/")
    assert response.status_code == 200
    data = response.json()
    assert (data["revenue"], data["units"]) == ("62.50", 4)
    assert data["categories"] == [
        {"slug": "books", "name": "Books", "orders": 2, "units": 3, "revenue": "37.50"},
        {"slug": "kitchen", "name": "Kitchen", "orders": 1, "units": 1, "revenue": "25.00"},
    ]
    assert [(row["sku"], row["units"], row["revenue"]) for row in data["top_products"]] == [
        ("BOOK-1", 3, "37.50"),
        ("KIT-1", 1, "25.00"),
    ]


def test_report_over_more_days_includes_older_orders(client, shop):
    data = client.get("/api/raw/reports/sales/?days=90").json()
    assert data["revenue"] == "142.50"
    assert data["top_products"][0]["sku"] == "BOOK-2"


def test_report_top_limits_the_products(client, shop):
    data = client.get("/api/raw/reports/sales/?days=90&top=1").json()
    assert len(data["top_products"]) == 1


def test_report_between_two_dates_includes_both_days(client, shop):
    day = (timezone.now() - timedelta(days=3)).date().isoformat()
    data = client.get(f"/api/raw/reports/sales/?start={day}&end={day}").json()
    assert data["revenue"] == "12.50"


def test_report_page_shows_the_same_numbers(client, shop):
    response = client.get("/reports/sales/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "4 units, 62.50 in revenue" in content
    assert "A Long Novel" in content and "37.50" in content


@pytest.mark.parametrize("query", ["start=0001-01-01&end=0001-01-02", "start=9999-12-29&end=9999-12-30"])
def test_report_of_the_first_and_last_days_there_are(client, shop, query):
    response = client.get(f"/api/raw/reports/sales/?{query}")
    assert response.status_code == 200
    assert response.json()["units"] == 0


def test_report_of_a_quiet_period_says_so(client, shop):
    response = client.get("/reports/sales/?start=2001-01-01&end=2001-01-31")
    assert response.status_code == 200
    assert "No sales in this period" in response.content.decode()


BAD_PARAMETERS = [
    "days=0",
    "days=-5",
    "days=x",
    "days=99999",
    "top=0",
    "top=1000",
    "start=2024-01-01",
    "end=2024-01-01",
    "start=2024-02-01&end=2024-01-01",
    "start=2024-13-01&end=2024-12-31",
    "start=1900-01-01&end=2024-01-01",
    "days=7&start=2024-01-01&end=2024-01-02",
    "start=2024-01-01%27%3B%20DROP%20TABLE%20orders_order%3B--&end=2024-01-02",
    # The period ends at midnight after the end date: 9999-12-31 has no next day.
    "start=9999-12-30&end=9999-12-31",
]


@pytest.mark.parametrize("query", BAD_PARAMETERS)
def test_bad_report_parameters_are_a_json_bad_request(client, shop, query):
    response = client.get(f"/api/raw/reports/sales/?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid report parameters."
    assert response.json()["fields"]


@pytest.mark.parametrize("query", BAD_PARAMETERS)
def test_bad_report_parameters_are_a_bad_request_page(client, shop, query):
    response = client.get(f"/reports/sales/?{query}")
    assert response.status_code == 400
    assert 'class="errorlist' in response.content.decode()


@pytest.mark.parametrize("path", ["/reports/sales/", "/api/raw/reports/sales/"])
def test_report_refuses_writes(client, path):
    assert client.post(path).status_code == 405
