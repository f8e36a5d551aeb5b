"""pydicom's bundled test files, found locally only.

``get_testdata_files()`` with a pattern also tries to download pydicom-data files
that are not bundled, so corpus enumeration walks the bundled folders instead.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from pydicom import dcmwrite
from pydicom.data import DATA_ROOT, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

CHARSET_DIR = Path(DATA_ROOT) / "charset_files"
TEST_FILES_DIR = Path(DATA_ROOT) / "test_files"


def bundled(name: str) -> Path:
    """A bundled test file by name; never downloads."""
    found = get_testdata_file(name, download=False)
    assert found is not None, f"pydicom test file {name} is not bundled"
    return Path(found)


def charset_file(name: str) -> Path:
    path = CHARSET_DIR / name
    assert path.is_file(), path
    return path


def corpus() -> list[Path]:
    """Every bundled test file (datasets and character set files), sorted."""
    return sorted(p for d in (TEST_FILES_DIR, CHARSET_DIR) for p in d.rglob("*") if p.is_file())


def part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part-10 file; pydicom's validation warnings are silenced (invalid data on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        # File meta needs these even when the data set lacks them (a test may remove them on purpose).
        ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or "1.2.3.4"
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()


def meta_end(data: bytes) -> int:
    """Offset of the first data set byte: preamble, 'DICM', then the group length's value."""
    return 132 + 12 + int.from_bytes(data[140:144], "little")


def with_meta_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The same file with another Transfer Syntax UID in its File Meta Information."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = "1.2.3.4"
        meta.TransferSyntaxUID = uid
        fp = DicomBytesIO()
        write_file_meta_info(fp, meta, enforce_standard=True)
    return data[:132] + fp.getvalue() + data[meta_end(data) :]
