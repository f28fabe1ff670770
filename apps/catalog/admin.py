from django.contrib import admin

from apps.catalog.models import Category, Product, Review


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name"]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "category", "price", "stock"]
    list_filter = ["category"]
    search_fields = ["sku", "name"]
    list_select_related = ["category"]
    autocomplete_fields = ["category"]


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["product", "customer", "rating", "created_at"]
    list_filter = ["rating"]
    search_fields = ["product__name", "title"]
    list_select_related = ["product", "customer"]
    # Thousands of products and customers: no giant <select>s.
    raw_id_fields = ["product", "customer"]
