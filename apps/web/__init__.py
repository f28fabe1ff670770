"""What every view of the site shares: JSON answers for the API (http.py)."""
