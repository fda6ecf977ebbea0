"""The ``latent-residual`` command line: the click group, the pipeline's subcommands and flags built from configs.

Commands parse, call one library function and print; the work lives in the other workflow packages."""
