"""Benchmarks: each module times a part of socialcrm against a plain baseline, side by side."""
