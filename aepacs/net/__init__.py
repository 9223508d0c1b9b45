"""DICOM networking: the archive SCP and the retrieval SCU (arrives with the network issue)."""
