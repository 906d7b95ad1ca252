"""Model tooling: the model pack, running it, decoding photos for it, training and evaluating it."""
