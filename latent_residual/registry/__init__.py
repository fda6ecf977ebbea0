"""The registry layer: the plugin hook specifications, the typed specs plugins fill, loading plugins, and
looking registered entries up. It imports the kernel, pluggy and Gymnasium; nothing of the workflow."""
