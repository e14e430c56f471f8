"""The demo's synthetic two-domain benchmark (advent/scripts/demo.py, make_synthetic_data.py)."""
