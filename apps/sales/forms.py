from datetime import date, datetime, time, timedelta

from django import forms
from django.core.validators import MaxValueValidator
from django.utils import timezone

MAX_DAYS = 3_660
# The period ends at midnight after the end date, which must exist: 9999-12-31 has no next day.
LAST_END_DATE = date.max - timedelta(days=1)


class ReportForm(forms.Form):
    """?days=N (the last N days, 30 by default) or ?start=YYYY-MM-DD&end=YYYY-MM-DD (inclusive)."""

    days = forms.IntegerField(required=False, min_value=1, max_value=MAX_DAYS)
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        validators=[MaxValueValidator(LAST_END_DATE)],
    )
    top = forms.IntegerField(required=False, min_value=1, max_value=100)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        start, end = data.get("start"), data.get("end")
        if data.get("days") and (start or end):
            raise forms.ValidationError("Give either days or a start and end date, not both.")
        if (start is None) != (end is None):
            raise forms.ValidationError("Give both a start and an end date.")
        if start and end:
            if start > end:
                raise forms.ValidationError("The start date is after the end date.")
            if (end - start).days >= MAX_DAYS:
                raise forms.ValidationError(f"At most {MAX_DAYS} days at once.")
        return data

    def period(self) -> tuple[datetime, datetime]:
        """The [start, end) range of a valid form, as aware datetimes."""
        data = self.cleaned_data
        if data.get("start"):
            zone = timezone.get_current_timezone()
            start = datetime.combine(data["start"], time.min, tzinfo=zone)
            end = datetime.combine(data["end"] + timedelta(days=1), time.min, tzinfo=zone)
            return start, end
        end = timezone.now()
        return end - timedelta(days=data.get("days") or 30), end
