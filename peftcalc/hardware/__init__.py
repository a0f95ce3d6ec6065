"""GPUs: the catalogue of hardware specs and prices (see catalogue.py)."""
