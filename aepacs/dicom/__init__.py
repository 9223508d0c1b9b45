"""DICOM itself: Part 10 streams, the structural scan, the attributes kept, derived and transport objects.

``part10``      split a Part 10 stream into header, pixel value and trailer, and join it again
``scan``        the structural scan a C-STORE is checked by before it is acknowledged
``pixels``      native pixel data: its description and array view
``attributes``  the attributes the index keeps, declared once per query level
``records``     one instance's attributes as the index keeps them; the UID rules
``derive``      a lossy reconstruction marked as a derived image
``transport``   the sealed transport object (Raw Data Storage) other PACS store
``frames``      frames of DICOM images, for training and evaluation
"""
