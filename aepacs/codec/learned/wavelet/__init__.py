"""The wavelet generation (architecture ``wavelet``, the ``@2`` and ``@3`` models).

``codec``    the codec: integer lifting, dead-zone quantization, range coding under the learned model
``lifting``  the integer lifting transform (numba)
``subband``  the context-adaptive range coder of the subbands (numba)
"""
