"""Reports: estimates, plans and measured results -> pandas DataFrames (frames.py) -> matplotlib figures
(figures.py, Agg) -> report.md, a self-contained index.html, PNGs and CSVs (page.py).

The only package besides measure/ with heavy imports (pandas, matplotlib); the core never imports it.
"""
