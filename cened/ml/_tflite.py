"""Where the LiteRT interpreter comes from.

The standalone ``ai-edge-litert`` runtime is preferred when installed: it is
a few megabytes and starts in a fraction of the time TensorFlow needs.  The
interpreter bundled in tensorflow-cpu runs the same flatbuffers, so the
daemon works with either.
"""

from __future__ import annotations

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on what is installed
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter  # type: ignore[misc]

__all__ = ["Interpreter"]
