"""``aepacs demo``: the archive over DICOM and DICOMweb, end to end, on embedded defaults.

1. A fresh home (temporary, or ``--home``) with a new keyring.
2. Part one, the embedded defaults: ``aepacs serve`` starts on a free loopback
   port; every bundled sample instance (pydicom's test files, the
   ``pydicom-data`` package, the real chest CT series in ``../shared/data/ct``
   when present) is sent with C-STORE, modality by modality, found with
   C-FIND, retrieved with C-GET by the SCU-side decoder
   (:func:`aepacs.net.client.retrieve`), and compared with the file it came
   from, element by element and pixel byte by pixel byte.
3. Part two, learned lossy: the same for the images of the modalities the
   shipped models code, each through its model at the model's default gain.
   What comes back is a derived image (Lossy Image Compression 01), measured
   against the original as ``aepacs eval`` measures it (PSNR and SSIM over
   the original's stored range, per frame), so ``aepacs eval --gains G`` on
   the same images gives the same figures.
4. Part three, DICOMweb: a fresh archive serving decoded originals with
   DICOMweb on; the same files stored by STOW-RS, found by QIDO-RS, retrieved
   by WADO-RS and compared; the time to a CT study's first frame; with the
   OHIF viewer installed, its URL for the CT study and a screenshot of it
   (headless Debian chromium). ``--keep`` leaves this server up until Ctrl-C.
5. A report: a table per part and modality, ``demo.json`` (every image's
   figures), a PNG of one CT slice (original / decoded / difference) and
   ``demo-viewer.png``, in ``~/.aepacs/demo`` (or the ``--home`` given).

The servers are real ``aepacs serve`` processes, stopped with SIGTERM.
The demo never touches a real archive: its data directory is its own, and
its configuration the embedded default (plus the lossy routes of part two,
and decoded retrieval with DICOMweb in part three).

``run``      the servers, the parts, the report files
``web``      part three: STOW-RS, QIDO-RS, WADO-RS, and its table
``browser``  the viewer's screenshot
``compare``  each retrieved file against the one sent
``report``   the table per modality and the figure of one slice
"""
