"""The pure DICOM core: bytes or pydicom in, values out; no HTTP, no SQL, no storage.

``part10`` parses a PS3.10 header and describes an instance for the index, ``dicom_json`` and
``dicom_xml`` are the PS3.18 Annex F encodings, ``frames``/``transcode``/``render`` work on pixel
data, ``query`` parses QIDO-RS queries, ``resources`` holds the study/series/instance triple and its
PS3.18 path, ``transfer_syntaxes`` and ``status`` the tables of the standard.
"""
