"""Pixel codecs and the plaintext payload inside a sealed object.

``base``      the codec interface
``lossless``  JPEG-LS, zstd and the kept-as-received form
``learned``   the trained codecs, one subpackage per generation, one table of architectures
``quality``   PSNR and SSIM, as the quality gate measures them
``payload``   the manifest and coded sections a sealed object holds; encode, decode, verify
"""
