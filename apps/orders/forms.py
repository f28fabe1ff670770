from django import forms

from apps.orders.services import MAX_QUANTITY

# Ids beyond PostgreSQL's bigint are refused here rather than by the database.
MAX_ID = 2**63 - 1


class OrderForm(forms.Form):
    """A one-line order, for the HTML page (the JSON API takes any number of lines)."""

    customer = forms.IntegerField(label="Customer number", min_value=1, max_value=MAX_ID)
    product = forms.IntegerField(label="Product number", min_value=1, max_value=MAX_ID)
    quantity = forms.IntegerField(min_value=1, max_value=MAX_QUANTITY, initial=1)
