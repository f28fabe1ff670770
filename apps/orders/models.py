import secrets
from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


def new_order_number() -> str:
    """A number for an order placed on the site; hard to guess, unlike the id."""
    return f"W-{secrets.token_hex(6).upper()}"


class Order(models.Model):
    class Status(models.TextChoices):
        PAID = "paid", "Paid"
        SHIPPED = "shipped", "Shipped"
        CANCELLED = "cancelled", "Cancelled"

    # The natural key: "W-…" for orders placed on the site, "S-…" for seeded ones.
    number = models.CharField(max_length=20, unique=True, default=new_order_number)
    # Indexed by the (customer, -created_at) index below.
    customer = models.ForeignKey(
        "customers.Customer", on_delete=models.PROTECT, related_name="orders", db_index=False
    )
    status = models.CharField(max_length=10, choices=Status, default=Status.PAID)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The sales report filters on a date range.
            models.Index(fields=["created_at"]),
            models.Index(fields=["customer", "-created_at"]),
        ]

    def __str__(self) -> str:
        return self.number

    def get_absolute_url(self) -> str:
        return reverse("orders:order-detail", args=[self.number])


class OrderLine(models.Model):
    # Indexed by the (order, product) unique constraint below.
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines", db_index=False)
    product = models.ForeignKey("catalog.Product", on_delete=models.PROTECT, related_name="order_lines")
    quantity = models.PositiveIntegerField()
    # The price when the order was placed; the product's price may change later.
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["order", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gte=1), name="orderline_quantity_positive"),
            models.CheckConstraint(
                condition=Q(unit_price__gte=Decimal("0")), name="orderline_price_not_negative"
            ),
            models.UniqueConstraint(fields=["order", "product"], name="orderline_product_once_per_order"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.product_id} in {self.order_id}"

    @property
    def total(self) -> Decimal:
        return self.quantity * self.unit_price


class Confirmation(models.Model):
    """An order confirmation, as the confirm_order task (apps/orders/tasks.py) sends it."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="confirmations")
    # Celery's id of the task that sent it: one confirmation per task, however often it is delivered.
    task_id = models.CharField(max_length=255, unique=True)
    delivery_days = models.PositiveSmallIntegerField()
    sent_at = models.DateTimeField(default=timezone.now)
    # The task's own report: whether it had a database connection checked out while it waited
    # for the carrier (apps/catalog/external.holds_connection).
    connection_held_during_call = models.BooleanField()

    class Meta:
        ordering = ["sent_at", "id"]

    def __str__(self) -> str:
        return f"confirmation of {self.order_id} by task {self.task_id}"
