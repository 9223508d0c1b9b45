"""Neural networks of the learned codecs.

``paper``       the baseline of Alslman et al. (Electronics 2022, 11, 3967), as in its Table 2
``factorized``  the production codec: strided analysis with GDN, sub-pixel synthesis,
                a per-channel discrete Laplace prior, variable rate through gains
``fixed``       the factorized synthesis frozen to integers, so every machine decodes alike
"""

from aepacs.codec.nets.factorized import FactorizedCodecNet
from aepacs.codec.nets.paper import PaperAutoencoder

ARCHITECTURES = {"factorized": FactorizedCodecNet, "paper": PaperAutoencoder}

__all__ = ["ARCHITECTURES", "FactorizedCodecNet", "PaperAutoencoder"]
