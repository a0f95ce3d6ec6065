"""Committed results of traced and measured steps: the typed record (`record`), what a run asked for
(`request`), reading and writing results files (`files`) and the prediction of a run (`predict`).

Pure Python: validation and reports read results without importing torch."""
