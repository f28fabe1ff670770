"""POST /api/orders/: place an order from JSON."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.orders.forms import MAX_ID
from apps.orders.services import OrderRefused, Wanted, order_json, place_order
from apps.web.http import ApiError, json_api, read_json_body


# CSRF protects cookie-authenticated browser forms. This endpoint takes only
# Content-Type: application/json (read_json_body answers 415 otherwise), which a
# cross-site page cannot send without a CORS preflight that this site never
# allows, and it trusts no cookie or session. The HTML form (orders:new) keeps CSRF.
@csrf_exempt
@json_api("POST")
def place(request: HttpRequest) -> JsonResponse:
    customer, wanted = parse_order(read_json_body(request))
    try:
        order, lines = place_order(customer, wanted)
    except OrderRefused as refusal:
        raise ApiError(refusal.status, refusal.message, **refusal.details) from None
    return JsonResponse(order_json(order, lines), status=201)


def parse_order(body: object) -> tuple[int, list[Wanted]]:
    """{"customer": id, "lines": [{"product": id, "quantity": n}, …]} → (customer, lines), or ApiError 400."""
    if not isinstance(body, dict):
        raise ApiError(400, 'Send an object: {"customer": id, "lines": [{"product": id, "quantity": n}]}.')
    unknown = sorted(set(body) - {"customer", "lines"})
    if unknown:
        raise ApiError(400, f"Unknown field {unknown[0]!r}.", fields=unknown)
    customer = positive_int(body.get("customer"), "customer", MAX_ID)
    lines = body.get("lines")
    if not isinstance(lines, list) or not lines:
        raise ApiError(400, '"lines" must be a non-empty list of {"product": id, "quantity": n}.')
    wanted = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict) or set(line) != {"product", "quantity"}:
            raise ApiError(400, f'lines[{i}] must be exactly {{"product": id, "quantity": n}}.')
        wanted.append(
            Wanted(
                product=positive_int(line["product"], f"lines[{i}].product", MAX_ID),
                quantity=positive_int(line["quantity"], f"lines[{i}].quantity", MAX_ID),
            )
        )
    return customer, wanted


def positive_int(value: object, field: str, maximum: int) -> int:
    # bool is an int in Python, but `true` is not a quantity.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ApiError(400, f"{field} must be a whole number from 1 to {maximum}.", field=field)
    return value
