"""What every view of the site shares: JSON answers for the API (http.py), and 503 with
Retry-After for transient database trouble (unavailable.py)."""
