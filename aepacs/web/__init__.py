"""DICOMweb (PS3.18): QIDO-RS, WADO-RS and STOW-RS over the archive, served by ``aepacs serve`` (``web.port``)."""
