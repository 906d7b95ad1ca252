"""cened: a self-hosted daemon that sorts photos from an inbox into albums."""

__version__ = "0.1.0"
