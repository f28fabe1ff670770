"""The sales report, in raw SQL.

Values (the date range, the row limit) only ever reach PostgreSQL as query
parameters (%s), never formatted into the SQL text. Cancelled orders are not sales.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection

BY_CATEGORY_SQL = """
    SELECT c.slug, c.name,
           count(DISTINCT o.id) AS orders,
           sum(l.quantity) AS units,
           sum(l.quantity * l.unit_price) AS revenue
    FROM orders_order o
    JOIN orders_orderline l ON l.order_id = o.id
    JOIN catalog_product p ON p.id = l.product_id
    JOIN catalog_category c ON c.id = p.category_id
    WHERE o.created_at >= %s AND o.created_at < %s AND o.status <> 'cancelled'
    GROUP BY c.id, c.slug, c.name
    ORDER BY revenue DESC, c.name
"""

TOP_PRODUCTS_SQL = """
    SELECT p.id, p.sku, p.name, sum(l.quantity) AS units, sum(l.quantity * l.unit_price) AS revenue
    FROM orders_order o
    JOIN orders_orderline l ON l.order_id = o.id
    JOIN catalog_product p ON p.id = l.product_id
    WHERE o.created_at >= %s AND o.created_at < %s AND o.status <> 'cancelled'
    GROUP BY p.id, p.sku, p.name
    ORDER BY revenue DESC, p.id
    LIMIT %s
"""


@dataclass(frozen=True)
class CategorySales:
    slug: str
    name: str
    orders: int
    units: int
    revenue: Decimal


@dataclass(frozen=True)
class ProductSales:
    id: int
    sku: str
    name: str
    units: int
    revenue: Decimal


@dataclass(frozen=True)
class SalesReport:
    start: datetime
    end: datetime
    categories: list[CategorySales]
    top_products: list[ProductSales]

    @property
    def revenue(self) -> Decimal:
        return sum((row.revenue for row in self.categories), start=Decimal("0"))

    @property
    def units(self) -> int:
        return sum(row.units for row in self.categories)

    def as_json(self) -> dict:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "revenue": str(self.revenue),
            "units": self.units,
            "categories": [{**row.__dict__, "revenue": str(row.revenue)} for row in self.categories],
            "top_products": [{**row.__dict__, "revenue": str(row.revenue)} for row in self.top_products],
        }


def sales_report(start: datetime, end: datetime, top: int = 10) -> SalesReport:
    """Sales of orders placed in [start, end), by category, and the `top` products."""
    with connection.cursor() as cursor:
        cursor.execute(BY_CATEGORY_SQL, [start, end])
        categories = [CategorySales(*row) for row in cursor.fetchall()]
        cursor.execute(TOP_PRODUCTS_SQL, [start, end, top])
        top_products = [ProductSales(*row) for row in cursor.fetchall()]
    return SalesReport(start, end, categories, top_products)
