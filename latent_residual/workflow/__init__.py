"""The workflow layer: datasets, pretraining, policy training, evaluation, export, experiments and the CLI.

It is built on the kernel (the modules directly under ``latent_residual``) and the registry; the kernel
never imports from here. Importing this package loads nothing; its modules import what they need.
"""
