"""Model registry, training data and training of the learned codecs."""
