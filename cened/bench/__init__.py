"""``cened bench``: the daemon's speed measured by running the real daemon and model."""
