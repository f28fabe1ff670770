"""The orders pages: place an order (HTML form with CSRF), see it, export all orders as CSV."""

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_safe

from apps.catalog.models import Product
from apps.orders.export import OrderExport
from apps.orders.forms import MAX_ID, OrderForm
from apps.orders.models import Order
from apps.orders.services import OrderRefused, Wanted, order_json, place_order


@require_http_methods(["GET", "HEAD", "POST"])
def new_order(request: HttpRequest) -> HttpResponse:
    status = 200
    if request.method == "POST":
        form = OrderForm(request.POST)
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                order, _ = place_order(data["customer"], [Wanted(data["product"], data["quantity"])])
            except OrderRefused as refusal:
                form.add_error(None, refusal.message)
                status = refusal.status
            else:
                # Post/redirect/get: reloading the confirmation does not order twice.
                return redirect(order)
    else:
        form = OrderForm(initial={"product": _product_from_query(request)})
    product = _chosen_product(form)
    return render(request, "orders/order_form.html", {"form": form, "product": product}, status=status)


def _product_from_query(request: HttpRequest) -> int | None:
    """?product=<id> from a product page's "Order this" link, if it is a plausible id."""
    value = request.GET.get("product", "")
    # The length check first: int() refuses strings over 4,300 digits.
    if value.isascii() and value.isdigit() and len(value) <= 19 and 1 <= int(value) <= MAX_ID:
        return int(value)
    return None


def _chosen_product(form: OrderForm) -> Product | None:
    """The product the form is about, to show its name and stock next to the number."""
    pk = form.cleaned_data.get("product") if form.is_bound else form.initial.get("product")
    return Product.objects.filter(pk=pk).first() if pk else None


@require_safe
def order_detail(request: HttpRequest, number: str) -> HttpResponse:
    order = get_object_or_404(Order, number=number)
    # No customer on this page: order numbers are not secrets, customers' details are.
    return render(request, "orders/order_detail.html", {"order": order, "data": order_json(order)})


@require_safe
def export_csv(request: HttpRequest) -> StreamingHttpResponse:
    # The first query runs here: a database error becomes a 503, not a 200 cut short.
    response = StreamingHttpResponse(OrderExport(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="orders.csv"'
    return response
