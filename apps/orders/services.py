"""Placing an order: the shop's one write path, shared by the JSON API and the HTML form."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from apps.catalog.models import Product
from apps.customers.models import Customer
from apps.orders.models import Order, OrderLine

MAX_LINES = 50
MAX_QUANTITY = 1_000


class OrderRefused(Exception):
    """The order cannot be placed; nothing was written. `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class UnknownCustomer(OrderRefused):
    pass


class UnknownProduct(OrderRefused):
    pass


class OutOfStock(OrderRefused):
    status = 409  # a conflict with the current state; the same order may succeed later


@dataclass(frozen=True)
class Wanted:
    product: int
    quantity: int


def place_order(customer_id: int, wanted: Iterable[Wanted]) -> tuple[Order, list[OrderLine]]:
    """Create an order and take its quantities out of stock, all or nothing.

    Two buyers of the last item must not both get it. Each product row is
    locked (SELECT … FOR UPDATE) for the rest of the transaction, so a second
    buyer waits here until the first one has committed and then sees the
    lowered stock. Locks are taken in product-id order, so two orders for the
    same products cannot deadlock. Any refusal rolls the whole transaction back.

    Returns the order and its lines (in product order), so that answering needs
    no second trip to the database.
    """
    quantities = merge(wanted)
    with transaction.atomic():
        customer = Customer.objects.filter(pk=customer_id).first()
        if customer is None:
            raise UnknownCustomer(f"There is no customer {customer_id}.", customer=customer_id)
        products = {
            product.pk: product
            for product in Product.objects.select_for_update().filter(pk__in=quantities).order_by("pk")
        }
        missing = sorted(set(quantities) - set(products))
        if missing:
            raise UnknownProduct(f"There is no product {missing[0]}.", products=missing)
        short = [
            {"product": pk, "requested": quantity, "in_stock": products[pk].stock}
            for pk, quantity in quantities.items()
            if products[pk].stock < quantity
        ]
        if short:
            raise OutOfStock("Not enough stock.", lines=short)

        order = Order.objects.create(customer=customer)
        lines = []
        for pk, quantity in quantities.items():
            product = products[pk]
            product.stock -= quantity
            product.save(update_fields=["stock"])
            lines.append(OrderLine(order=order, product=product, quantity=quantity, unit_price=product.price))
        OrderLine.objects.bulk_create(lines)
    return order, lines


def merge(wanted: Iterable[Wanted]) -> dict[int, int]:
    """Quantities per product, in product order; the same product twice is one line."""
    totals: Counter[int] = Counter()
    for line in wanted:
        totals[line.product] += line.quantity
    if not totals:
        raise OrderRefused("An order needs at least one line.")
    if len(totals) > MAX_LINES:
        raise OrderRefused(f"An order has at most {MAX_LINES} lines.")
    too_many = [pk for pk, quantity in totals.items() if quantity > MAX_QUANTITY]
    if too_many:
        raise OrderRefused(f"At most {MAX_QUANTITY} of one product per order.", products=too_many)
    return dict(sorted(totals.items()))


def order_json(order: Order, lines: list[OrderLine] | None = None) -> dict:
    if lines is None:
        lines = list(order.lines.select_related("product").order_by("product_id"))
    return {
        "number": order.number,
        "status": order.status,
        "created_at": order.created_at.isoformat(),
        "lines": [
            {
                "product": line.product_id,
                "sku": line.product.sku,
                "quantity": line.quantity,
                "unit_price": str(line.unit_price),
                "total": str(line.total),
            }
            for line in lines
        ],
        "total": str(sum((line.total for line in lines), start=Decimal("0"))),
        "url": order.get_absolute_url(),
    }
