"""The factorized generation (architecture ``factorized``): the legacy decoder of the ``@1`` models.

Objects sealed with ``ct@1``, ``mr@1``, ``cr@1`` or ``us@1`` (their sealed
header's codec is ``ae:NAME@1``) need this package to open; new objects are
coded by :mod:`aepacs.codec.learned.wavelet`. It needs torch (the analysis
network and the integer synthesis' convolutions).

``codec``    the codec: latent and residual streams
``net``      the float network (analysis, synthesis, entropy model), as trained
``fixed``    the synthesis frozen to integers, so every machine decodes alike
``latent``   the latent's block-adaptive Laplace coding
``entropy``  the ANS coder under integer tables (constriction)
"""
