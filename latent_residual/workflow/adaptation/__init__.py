"""Adaptation methods: the interface every way of adapting a simulation model implements, and the built-ins.

Running them over data sizes and seeds is ``experiments/``; their data curve is ``reports/data_curve.py``."""
