"""Results as text for people and scripts: `text` (numbers, tables, CSV), `estimate` and `plan` (each
result's table, JSON contract and CSV, with its assumptions)."""
