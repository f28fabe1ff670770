from django import forms
from django.db.models import Q, QuerySet
from django.forms.models import ModelChoiceIterator

from apps.catalog.models import Category, Product


class ReadFirstChoices(ModelChoiceIterator):
    """The choices read in one ordinary query, before the first is rendered.

    Django's own iterator reads them through ``.iterator()``: a server-side
    cursor, open (with its pooled connection) while the template renders the
    <select>, and cut if the connection is lost meanwhile. A handful of
    categories does not need streaming.
    """

    def __iter__(self):
        if self.field.empty_label is not None:
            yield ("", self.field.empty_label)
        for obj in list(self.queryset):
            yield self.choice(obj)


class CategoryChoiceField(forms.ModelChoiceField):
    iterator = ReadFirstChoices


class ProductFilterForm(forms.Form):
    """The product list's query string: ?category=<slug>&q=<text>&min_price=&max_price=&page=."""

    category = CategoryChoiceField(
        queryset=Category.objects.all(),
        to_field_name="slug",
        required=False,
        empty_label="All categories",
    )
    q = forms.CharField(label="Search", required=False, max_length=100)
    min_price = forms.DecimalField(required=False, min_value=0, max_digits=10, decimal_places=2)
    max_price = forms.DecimalField(required=False, min_value=0, max_digits=10, decimal_places=2)
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean(self) -> dict:
        data = super().clean()
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            raise forms.ValidationError("The minimum price is above the maximum price.")
        return data

    def filter(self, products: QuerySet[Product]) -> QuerySet[Product]:
        """`products` narrowed to what the (valid) form asks for."""
        data = self.cleaned_data
        if data.get("category"):
            products = products.filter(category=data["category"])
        if data.get("q"):
            products = products.filter(Q(name__icontains=data["q"]) | Q(sku__iexact=data["q"]))
        if data.get("min_price") is not None:
            products = products.filter(price__gte=data["min_price"])
        if data.get("max_price") is not None:
            products = products.filter(price__lte=data["max_price"])
        return products
