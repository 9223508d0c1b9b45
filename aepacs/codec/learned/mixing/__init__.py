"""The mixing generation (architecture ``mixing``): lossless, adaptive prediction and a gated mixing network.

``codec``   the codec: planes (RCT for colour), one trained starting state per plane kind
``kernel``  the predictor, the mixing network and the range coder of one plane (numba)
``fit``     training: the starting state averaged over the training images
"""
