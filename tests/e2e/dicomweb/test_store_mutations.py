"""STOW under mutation: pydicom's test files truncated, with lengths, items and delimiters damaged,
NULs and deep sequences inserted.  Every case is either stored and comes back byte-identical
(from byte 128, WADO-RS with ``transfer-syntax=*``) or fails with a PS3.18 FailureReason; never
a 5xx, never an acknowledged broken instance, and never harm to the other parts of a request.

The bulk goes over ASGI (fast); a handful goes through a real socket, single part and multipart.
Mutations are deterministic (a fixed seed), so a failure always reproduces.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pydicom
import pytest
from pydicom.filereader import data_element_generator

from dicomweb_server.dicom import status, structure
from tests.conftest import App, Server
from tests.support.dicomfiles import content_type, instance, multipart, nested, split_multipart
from tests.support.testdata import bundled

STUDIES = "/dicomweb/studies"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
REASONS = {
    status.CANNOT_UNDERSTAND,
    status.REFUSED_OUT_OF_RESOURCES,
    status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    status.TRANSFER_SYNTAX_NOT_SUPPORTED,
    status.PROCESSING_FAILURE,
}
# Native, JPEG baseline and extended, JPEG-LS, JPEG 2000, RLE (multi-frame), implicit VR, big endian,
# deflated, and sequences (SR, RT plan, private).
FILES = [
    "CT_small.dcm",
    "JPEG-lossy.dcm",
    "JPGExtended.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "test-SR.dcm",
    "rtplan.dcm",
    "nested_priv_SQ.dcm",
]


_SERIAL = itertools.count(1)


def uid() -> str:
    """A fresh UID of a fixed length: the mutated copies of a file share one layout."""
    return f"1.2.826.0.1.3680043.8.498.1{next(_SERIAL) + 10**12 * random.randrange(1, 10**6):020d}"


def fresh(name: str, study: str, series: str | None = None) -> bytes:
    """A pydicom test file with fresh UIDs (its own transfer syntax and encoding kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(bundled(name))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series or uid()
        ds.SOPInstanceUID = uid()
        if "SOPClassUID" not in ds:
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def sop_uid(data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def boundaries(data: bytes) -> set[int]:
    """Offsets where a top-level element of the data set ends (an independent reading, by pydicom):
    a part cut exactly there holds a complete, shorter data set."""
    fp = io.BytesIO(data)
    meta = pydicom.filereader.read_preamble(fp, False)
    del meta
    file_meta = pydicom.filereader._read_file_meta_info(fp)
    start = fp.tell()
    uid = pydicom.uid.UID(file_meta.TransferSyntaxUID)
    if uid == pydicom.uid.DeflatedExplicitVRLittleEndian:
        # The data set ends with its deflate stream; bytes after it (pydicom's image_dfl.dcm has an
        # 8-byte gzip-style trailer) can be cut without losing anything.
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater.decompress(data[start:])
        return set(range(len(data) - len(inflater.unused_data), len(data) + 1))
    ends = {start}
    fp.seek(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _elem in data_element_generator(fp, uid.is_implicit_VR, uid.is_little_endian):
            ends.add(fp.tell())
    return ends


def pixel_header(data: bytes) -> tuple[int, int]:
    """(offset of the Pixel Data element's header, offset of its value) in a little endian file."""
    tag = data.rfind(b"\xe0\x7f\x10\x00")
    assert tag > 0
    explicit = data[tag + 4 : tag + 6] in (b"OB", b"OW")
    return tag, tag + (12 if explicit else 8)


def fragments(data: bytes, value: int) -> tuple[list[int], int]:
    """Offsets of the item headers of encapsulated Pixel Data, and of its sequence delimiter."""
    items, pos = [], value
    while data[pos : pos + 4] == b"\xfe\xff\x00\xe0":
        items.append(pos)
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    assert data[pos : pos + 4] == b"\xfe\xff\xdd\xe0"
    return items, pos


@dataclass
class Case:
    name: str
    data: bytes
    broken: bool  # True: it must fail; False: it must be stored; None-like via `either`
    either: bool = False  # a complete data set is possible (cut at an element boundary): either outcome
    uid: str = ""  # its SOP Instance UID

    def __post_init__(self) -> None:
        self.uid = self.uid or sop_uid(self.data)


def truncations(name: str, study: str, rng: random.Random) -> list[Case]:
    """Cuts at the places the report names, and a few at random (each case has its own UIDs)."""
    data = fresh(name, study)
    ends = boundaries(data)
    cuts = {len(data) - 1, len(data) - 2, len(data) - 8, len(data) // 2, len(data) * 9 // 10}
    if not name.endswith("dfl.dcm") and data.rfind(b"\xe0\x7f\x10\x00") > 0:
        tag, value = pixel_header(data)
        cuts |= {tag + 2, tag + 6, value, value + 1, value + 8}
    cuts |= {rng.randrange(400, len(data)) for _ in range(16)}
    out = []
    for n in sorted(cuts):
        if 400 <= n < len(data):  # the header (and its UIDs) whole: the failure names the instance
            out.append(
                Case(
                    f"{name} cut at {n}", data[:n], broken=n not in ends, either=n in ends, uid=sop_uid(data)
                )
            )
            data = fresh(name, study)  # the next case: the same bytes but for the UIDs' digits
            ends = boundaries(data)
    return out


def corruptions(name: str, study: str) -> list[Case]:
    """Pixel Data lengths past the end, encapsulated items too long, the sequence delimiter missing."""
    data = fresh(name, study)
    if name.endswith(("dfl.dcm", "bigendian.dcm")) or data.rfind(b"\xe0\x7f\x10\x00") < 0:
        return []
    out = []

    def case(label: str, mutate: object) -> None:
        data = fresh(name, study)
        out.append(Case(f"{name} {label}", mutate(data), broken=True, uid=sop_uid(data)))  # type: ignore[operator]

    _tag, value = pixel_header(data)
    (length,) = struct.unpack_from("<I", data, value - 4)
    if length != 0xFFFFFFFF:
        for extra in (2, 1000, 0xFFFFFFF0):
            case(
                f"Pixel Data length +{extra}",
                lambda d, e=extra: (
                    d[: value - 4] + struct.pack("<I", min(len(d) - value + e, 0xFFFFFFFE)) + d[value:]
                ),
            )
        return out
    items, delimiter = fragments(data, value)
    case("without its sequence delimiter", lambda d: d[:delimiter] + d[delimiter + 8 :])
    last = items[-1]  # the last fragment's item header
    (frag,) = struct.unpack_from("<I", data, last + 4)
    for extra in (1, 4096):  # its length past the end of the part
        case(
            f"last item +{extra + 8}",
            lambda d, e=extra: d[: last + 4] + struct.pack("<I", frag + 8 + e) + d[last + 8 :],
        )
    case("item tag damaged", lambda d: d[:last] + b"\xfe\xff\x0d\xe0" + d[last + 4 :])  # not an item
    return out


def with_text(study: str, **attrs: object) -> bytes:
    return instance(study, **attrs)


def results(body: dict) -> tuple[set[str], dict[str | None, list[tuple[int, str]]]]:
    stored = {item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])}
    failed: dict[str | None, list[tuple[int, str]]] = {}
    for seq in ("00081198", "0008119A"):
        for item in body.get(seq, {}).get("Value", []):
            uid = item.get("00081155", {}).get("Value", [None])[0]
            comment = item["00000902"]["Value"][0]
            assert len(comment) <= 64
            failed.setdefault(uid, []).append((item["00081197"]["Value"][0], comment))
    return stored, failed


def check(cases: list[Case], body: dict) -> set[str]:
    """Each case stored or failed as it must be; returns the SOP Instance UIDs stored.
    A part cut before its UIDs are whole fails without them (Other Failures Sequence)."""
    stored, failed = results(body)
    for case in cases:
        if case.uid in stored:
            assert not case.broken or case.either, f"{case.name}: acknowledged although broken"
            continue
        assert case.broken or case.either, f"{case.name}: not stored: {failed.get(case.uid)}"
        if case.uid in failed and not case.either:
            reason, comment = failed[case.uid][0]
            assert reason == status.CANNOT_UNDERSTAND, (case.name, hex(reason), comment)
    assert set(failed) <= {c.uid for c in cases} | {None}, "a failure names a UID no part has"
    assert sum(len(f) for f in failed.values()) == sum(c.uid not in stored for c in cases)
    assert all(reason in REASONS for fs in failed.values() for reason, _ in fs), failed
    return stored


async def round_trip(client: httpx.AsyncClient, study: str, cases: list[Case], stored: set[str]) -> None:
    """Every stored instance comes back byte for byte (the preamble is zeroed by design)."""
    r = await client.get(f"{STUDIES}/{study}", headers={"Accept": DICOM_ANY})
    assert r.status_code == 200, r.text[:300]
    got = sorted(body[128:] for _, body in split_multipart(r.content, r.headers["content-type"]))
    expected = sorted(c.data[128:] for c in cases if c.uid in stored)
    assert len(got) == len(stored)
    assert got == expected


async def test_mutated_pydicom_files_over_asgi_multipart(app: App) -> None:
    """All the mutations of one file in one request: each part stands alone."""
    for name in FILES:
        study = uid()
        rng = random.Random(name)
        data = fresh(name, study)
        cases = [Case(f"{name} as sent", data, broken=False), *truncations(name, study, rng)]
        cases += corruptions(name, study) + damaged(name, study, rng)
        r = await app.client.post(
            STUDIES, content=multipart([c.data for c in cases]), headers={"Content-Type": content_type()}
        )
        assert r.status_code in (200, 202), (name, r.status_code, r.text[:300])
        stored = check(cases, r.json())
        assert cases[0].uid in stored, name
        await round_trip(app.client, study, cases, stored)


@pytest.mark.parametrize(
    "name", ["JPEG-lossy.dcm", "CT_small.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_bigendian.dcm"]
)
async def test_mutated_files_single_part(app: App, name: str) -> None:
    """As application/dicom, one instance per request: a broken one is a 409 and leaves no row."""
    study = uid()
    cases = truncations(name, study, random.Random(1)) + corruptions(name, study)
    acknowledged = 0
    for case in cases:
        r = await app.client.post(STUDIES, content=case.data, headers={"Content-Type": "application/dicom"})
        assert r.status_code in (200, 409), (case.name, r.status_code, r.text[:300])
        stored = check([case], r.json())
        assert (r.status_code == 200) == bool(stored), case.name
        acknowledged += r.status_code == 200
    assert await app.state.pool.fetchval("SELECT count(*) FROM instance") == acknowledged  # type: ignore[attr-defined]
    assert len(objects(app)) == acknowledged  # a failed part leaves no object behind


async def test_the_reported_case_jpeg_lossy_without_its_last_8_bytes(app: App) -> None:
    data = fresh("JPEG-lossy.dcm", uid())
    r = await app.client.post(STUDIES, content=data[:-8], headers={"Content-Type": "application/dicom"})
    assert r.status_code == 409, r.text
    (item,) = r.json()["00081198"]["Value"]
    assert item["00081197"]["Value"] == [status.CANNOT_UNDERSTAND]
    assert item["00081155"]["Value"] == [sop_uid(data)]
    assert "(7FE0,0010)" in item["00000902"]["Value"][0]
    assert await app.state.pool.fetchval("SELECT count(*) FROM instance") == 0  # type: ignore[attr-defined]
    assert objects(app) == []


def objects(app: App) -> list[object]:
    root = app.settings.storage.path
    return [p for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts]


def damaged(name: str, study: str, rng: random.Random, count: int = 12) -> list[Case]:
    """Random bytes overwritten anywhere after the UIDs: stored (and whole) or failed, never a 5xx."""
    out = []
    for _ in range(count):
        original = fresh(name, study)
        data = bytearray(original)
        at = rng.randrange(400, len(data) - 4)
        data[at : at + 4] = rng.choice(
            [b"\xff\xff\xff\xff", b"\xfe\xff\x00\xe0", b"\x00\x00\x00\x00", b"SQ\x00\x00"]
        )
        out.append(
            Case(f"{name} damaged at {at}", bytes(data), broken=False, either=True, uid=sop_uid(original))
        )
    return out


def with_private_creator(study: str, creator: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(instance(study)))
        ds.add_new(0x00090010, "LO", creator)
        ds.add_new(0x00091001, "LO", "value\0of the creator")
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()


async def test_nul_in_text_elements_is_stored_with_sanitised_index_values(app: App) -> None:
    """PostgreSQL cannot hold NUL: the bytes are stored as sent, the index and JSON say U+FFFD."""
    study = uid()
    files = [
        instance(study, ImageComments="a\0b"),
        instance(study, patient="Doe\0^Jane"),
        with_private_creator(study, "ACME\0 1.0"),
        instance(study),
    ]
    r = await app.client.post(STUDIES, content=multipart(files), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    stored, _ = results(r.json())
    assert len(stored) == 4
    cases = [Case("nul", f, broken=False) for f in files]
    await round_trip(app.client, study, cases, stored)
    meta = (await app.client.get(f"{STUDIES}/{study}/metadata")).json()
    comments = [m["00204000"]["Value"][0] for m in meta if "00204000" in m]
    assert comments == ["a\ufffdb"]
    creators = [m["00090010"]["Value"][0] for m in meta if "00090010" in m]
    assert creators == ["ACME\ufffd 1.0"]
    names = await app.state.pool.fetch("SELECT patient_name FROM study")  # type: ignore[attr-defined]
    assert [row["patient_name"] for row in names] in (["Doe^Jane"], ["Doe\ufffd^Jane"])


@pytest.mark.parametrize("undefined", [True, False])
async def test_sequence_depth_limit_is_a_per_instance_failure(app: App, undefined: bool) -> None:
    """Nested up to MAX_SEQUENCE_DEPTH: stored; deeper: that instance fails alone, with a clear reason."""
    study = uid()
    limit = structure.MAX_SEQUENCE_DEPTH
    ok = [nested(study, 1, undefined=undefined), nested(study, limit, undefined=undefined)]
    sops = [uid() for _ in range(5)]
    deep = [
        nested(study, depth, undefined=undefined, sop=sop)
        for depth, sop in zip((limit + 1, 90, 150, 199, 250), sops, strict=True)
    ]
    r = await app.client.post(STUDIES, content=multipart(ok + deep), headers={"Content-Type": content_type()})
    assert r.status_code == 202, r.text
    stored, failed = results(r.json())
    assert stored == {sop_uid(f) for f in ok}
    assert set(failed) == set(sops)  # named: FailedSOPSequence
    reasons = [f for fs in failed.values() for f in fs]
    assert reasons == [(status.CANNOT_UNDERSTAND, f"Sequences are nested deeper than {limit} levels")] * len(
        deep
    )
    await round_trip(app.client, study, [Case("ok", f, broken=False) for f in ok], stored)


# Request-level messages (item 15): what is wrong, in words -------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "ctype", "message"),
    [
        (f"{STUDIES}/abc", None, "application/dicom", "in the path is not a valid UID"),
        (STUDIES, b"", "application/dicom", "empty request body"),
        (STUDIES, b"", None, "empty request body"),
        (
            STUDIES,
            b"--d1c0m-b0undary\nContent-Type: application/dicom\n\nx\n--d1c0m-b0undary--\n",
            None,
            "followed by a bare LF; multipart lines must end in CRLF",
        ),
        (
            STUDIES,
            multipart([b"x"], boundary="another"),
            None,
            "no boundary delimiter found: the body does not contain --d1c0m-b0undary followed by CRLF",
        ),
    ],
)
async def test_request_level_mistakes_are_400_with_a_clear_message(
    app: App, path: str, body: bytes | None, ctype: str | None, message: str
) -> None:
    content = instance() if body is None else body
    r = await app.client.post(path, content=content, headers={"Content-Type": ctype or content_type()})
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert await app.state.pool.fetchval("SELECT count(*) FROM instance") == 0  # type: ignore[attr-defined]


async def test_duplicate_failure_comment_is_complete_and_names_the_setting(app: App) -> None:
    study, series, sop = uid(), uid(), uid()
    first, second = instance(study, series, sop, seed=1), instance(study, series, sop, seed=2)
    assert (
        await app.client.post(STUDIES, content=first, headers={"Content-Type": "application/dicom"})
    ).status_code == 200
    r = await app.client.post(STUDIES, content=second, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 409
    (item,) = r.json()["00081198"]["Value"]
    assert item["00000902"]["Value"] == ["Already stored with other content; see DICOMWEB_DUPLICATE_POLICY"]


# Through a real socket: a handful, single part and multipart, streamed in small chunks ----------


def test_mutations_through_a_real_socket(live_server: Server) -> None:
    study = uid()
    good = fresh("JPEG-lossy.dcm", study)
    cut = fresh("JPEG-lossy.dcm", study)
    long_pixels = corruptions("CT_small.dcm", study)[2]  # Pixel Data length near 0xFFFFFFFF
    deep_sop = uid()
    deep = nested(study, structure.MAX_SEQUENCE_DEPTH + 40, sop=deep_sop)
    nul = instance(study, ImageComments="a\0b")
    with httpx.Client(base_url=live_server.url, headers=live_server.headers, timeout=60) as client:
        r = client.post(STUDIES, content=cut[:-8], headers={"Content-Type": "application/dicom"})
        assert r.status_code == 409, r.text
        assert check([Case("cut", cut[:-8], broken=True, uid=sop_uid(cut))], r.json()) == set()

        body = multipart([good, cut[: len(cut) // 2], long_pixels.data, deep, nul])

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 1500):
                yield body[i : i + 1500]

        r = client.post(STUDIES, content=chunks(), headers={"Content-Type": content_type()})
        assert r.status_code == 202, r.text
        cases = [
            Case("good", good, broken=False),
            Case("half", cut[: len(cut) // 2], broken=True, uid=sop_uid(cut)),
            long_pixels,
            Case("deep", deep, broken=True, uid=deep_sop),
            Case("nul", nul, broken=False),
        ]
        stored = check(cases, r.json())
        assert stored == {sop_uid(good), sop_uid(nul)}
        _, failed = results(r.json())
        assert failed[deep_sop] == [
            (
                status.CANNOT_UNDERSTAND,
                f"Sequences are nested deeper than {structure.MAX_SEQUENCE_DEPTH} levels",
            )
        ]
        back = client.get(f"{STUDIES}/{study}", headers={"Accept": DICOM_ANY})
        assert back.status_code == 200
        got = sorted(p[128:] for _, p in split_multipart(back.content, back.headers["content-type"]))
        assert got == sorted([good[128:], nul[128:]])
