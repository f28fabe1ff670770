from django.contrib import admin

from apps.orders.models import Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    raw_id_fields = ["product"]
    extra = 0


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["number", "customer", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["number", "customer__name", "customer__email"]
    date_hierarchy = "created_at"
    list_select_related = ["customer"]
    raw_id_fields = ["customer"]
    inlines = [OrderLineInline]


@admin.register(OrderLine)
class OrderLineAdmin(admin.ModelAdmin):
    list_display = ["order", "product", "quantity", "unit_price"]
    list_select_related = ["order", "product"]
    raw_id_fields = ["order", "product"]
