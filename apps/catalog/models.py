from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


class Category(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    # No index of its own: the (category, name) index below serves lookups by category.
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products", db_index=False)
    sku = models.CharField("SKU", max_length=32, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    # PositiveIntegerField is also a CHECK (stock >= 0) in the database: even a
    # buggy write path cannot oversell, it fails instead.
    stock = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            # The product list: by name, optionally within a category and a price range.
            models.Index(fields=["name", "id"]),
            models.Index(fields=["category", "name"]),
            models.Index(fields=["price"]),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=Decimal("0")), name="product_price_not_negative"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("catalog:product-detail", args=[self.pk])


class Review(models.Model):
    # Indexed by the (product, -created_at) index below.
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="reviews", db_index=False)
    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField()
    title = models.CharField(max_length=120)
    body = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["product", "-created_at"])]
        constraints = [
            models.CheckConstraint(condition=Q(rating__gte=1, rating__lte=5), name="review_rating_1_to_5"),
            # One review per customer and product (also the seed command's natural key).
            models.UniqueConstraint(fields=["product", "customer"], name="review_once_per_customer"),
        ]

    def __str__(self) -> str:
        return f"{self.rating}/5 for {self.product}"
