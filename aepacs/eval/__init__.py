"""``aepacs eval``: the learned codec measured against standard codecs on real images."""
