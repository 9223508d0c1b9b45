"""Training codec models on DICOM images and adding them to the registry (``aepacs train``; needs torch).

``train``        the training run: data, split, checkpoints, the registry entry and its metrics
``wavelet_fit``  the wavelet generation's fit: lifting taps, then the entropy model
"""
