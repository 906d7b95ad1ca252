"""Training and evaluating the shipped model: needs the ``[train]`` extra (TensorFlow).

Nothing here is loaded by the daemon; it imports :mod:`cened.ml`, never the other way.
"""
