"""Published GPU measurements as evidence: typed records (record.py), read and checked from
bench/published/memory/*.jsonl (load.py), each mapped to the peftcalc estimate of its run (mapping.py),
predicted and compared with the quantity its source measured (compare.py), summarised into the bands the
estimate prints (bands.py). Pure Python: no torch, no pandas; the estimate never imports this package."""
