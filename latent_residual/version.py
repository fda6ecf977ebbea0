"""The library's version, in a module of its own so that every layer can record it in the files it writes.

Nothing else lives here; importing it loads nothing.
"""

__version__ = "0.2.0"
