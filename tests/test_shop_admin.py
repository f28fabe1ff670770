"""Every shop model is in the admin, and its pages render."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.orders.models import Order
from tests.test_shop_support import make_order, make_shop

pytestmark = pytest.mark.django_db

MODELS = [
    "catalog.category",
    "catalog.product",
    "catalog.review",
    "customers.customer",
    "orders.order",
    "orders.orderline",
]


@pytest.mark.parametrize("model", MODELS)
def test_admin_list_and_add_pages_render(admin_client, model):
    shop = make_shop()
    make_order(shop.ada, [(shop.novel, 1)], number="S-1")
    app_label, model_name = model.split(".")
    for view in ("changelist", "add"):
        response = admin_client.get(reverse(f"admin:{app_label}_{model_name}_{view}"))
        assert response.status_code == 200, view


def test_admin_order_page_shows_its_lines(admin_client):
    shop = make_shop()
    order = make_order(shop.ada, [(shop.novel, 2)], number="S-1")
    response = admin_client.get(reverse("admin:orders_order_change", args=[order.pk]))
    assert response.status_code == 200
    assert "S-1" in response.content.decode()
    assert Order.objects.count() == 1


def test_admin_is_for_staff_only(client):
    response = client.get(reverse("admin:customers_customer_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
