"""Experiments: evaluating a policy in an environment, and the ReDRAW experiment end to end as resumable
stages over methods, data sizes and seeds. The tables and pictures they produce are ``reports/``."""
