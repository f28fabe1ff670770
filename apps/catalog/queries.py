"""Reads shared by the catalog's HTML pages and JSON endpoints."""

from __future__ import annotations

from django.core.paginator import EmptyPage, Page, Paginator
from django.db.models import Avg, Count, QuerySet
from django.http import Http404

from apps.catalog.models import Product, Review

PAGE_SIZE = 20
LATEST_REVIEWS = 20

# Raw SQL for the "raw" endpoints. Values only ever travel as parameters (%s).
PRODUCT_SQL = """
    SELECT p.id, p.sku, p.name, p.price, p.stock, c.slug, c.name
    FROM catalog_product p
    JOIN catalog_category c ON c.id = p.category_id
    WHERE p.id = %s
"""


def listed_products() -> QuerySet[Product]:
    return Product.objects.select_related("category").order_by("name", "id")


def page_of(queryset: QuerySet, number: int | None, per_page: int = PAGE_SIZE) -> Page:
    """Page `number` (1 if None); a page past the end is a 404, as a missing object would be."""
    paginator = Paginator(queryset, per_page)
    try:
        return paginator.page(number or 1)
    except EmptyPage as exc:
        raise Http404(f"There is no page {number}; the last page is {paginator.num_pages}.") from exc


def latest_reviews(product: Product) -> list[Review]:
    return list(product.reviews.select_related("customer").order_by("-created_at", "-id")[:LATEST_REVIEWS])


def review_stats(product: Product) -> dict:
    return product.reviews.aggregate(count=Count("id"), average=Avg("rating"))


def product_json(product: Product) -> dict:
    return {
        "id": product.pk,
        "sku": product.sku,
        "name": product.name,
        "category": {"slug": product.category.slug, "name": product.category.name},
        # Money as a string: JSON numbers are floats to most clients.
        "price": str(product.price),
        "stock": product.stock,
        "url": product.get_absolute_url(),
    }


def product_row_json(row: tuple) -> dict:
    """product_json() for a row of PRODUCT_SQL."""
    pk, sku, name, price, stock, category_slug, category_name = row
    return {
        "id": pk,
        "sku": sku,
        "name": name,
        "category": {"slug": category_slug, "name": category_name},
        "price": str(price),
        "stock": stock,
        "url": f"/products/{pk}/",
    }


def review_json(review: Review) -> dict:
    return {
        "rating": review.rating,
        "title": review.title,
        "body": review.body,
        # Customers' names at most, shortened; never their email or address.
        "author": review.customer.public_name,
        "created_at": review.created_at.isoformat(),
    }
