"""The catalog's HTML pages (ORM only)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_safe

from apps.catalog.forms import ProductFilterForm
from apps.catalog.models import Product
from apps.catalog.queries import latest_reviews, listed_products, page_of, review_stats


@require_safe
def product_list(request: HttpRequest) -> HttpResponse:
    form = ProductFilterForm(request.GET)
    if not form.is_valid():
        # A malformed filter is the client's mistake: say what is wrong, with a 400.
        return render(request, "catalog/product_list.html", {"form": form, "page": None}, status=400)
    page = page_of(form.filter(listed_products()), form.cleaned_data["page"])
    return render(request, "catalog/product_list.html", {"form": form, "page": page})


@require_safe
def product_detail(request: HttpRequest, product_id: int) -> HttpResponse:
    product = get_object_or_404(Product.objects.select_related("category"), pk=product_id)
    context = {"product": product, "reviews": latest_reviews(product), "stats": review_stats(product)}
    return render(request, "catalog/product_detail.html", context)
