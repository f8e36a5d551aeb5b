"""WADO-RS input that once gave 5xx (issue 10, item 5): each is now a clean 400 or 406."""

from __future__ import annotations

import httpx
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.dicom.frames import MAX_FRAMES_PER_REQUEST
from tests.conftest import App
from tests.support.dicomfiles import content_type, multiframe, multipart

STUDIES = "/dicomweb/studies"


async def stored_multiframe(app: App) -> str:
    study, series = generate_uid(), generate_uid()
    data = multiframe(study, series, frames=3)
    r = await app.client.post(STUDIES, content=multipart([data]), headers={"Content-Type": content_type()})
    assert r.status_code == 200, r.text
    sop = r.json()["00081199"]["Value"][0]["00081155"]["Value"][0]
    return f"{STUDIES}/{study}/series/{series}/instances/{sop}"


SUFFIXES = ["", "/metadata", "/rendered", "/thumbnail", "/frames/1", "/bulkdata/7FE00010"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("value", ["\u0100", "image/png\u2603", 'multipart/related; type="\U0001f600"'])
async def test_an_accept_parameter_beyond_latin_1_is_a_clean_400(app: App, suffix: str, value: str) -> None:
    url = await stored_multiframe(app)
    r = await app.client.get(url + suffix, params={"accept": value})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert "U+" in r.json()["message"]


async def test_capabilities_without_a_token_refuse_such_an_accept_cleanly(app: App) -> None:
    anonymous = httpx.AsyncClient(transport=app.client._transport, base_url="http://testserver")
    async with anonymous:
        r = await anonymous.request("OPTIONS", "/dicomweb?accept=%C4%80")
        assert r.status_code == 400
        assert "U+0100" in r.json()["message"]
        r = await anonymous.request("OPTIONS", "/dicomweb?accept=application/json")
        assert r.status_code == 200


@pytest.mark.parametrize(
    "query",
    ["quality=%C2%B3", "quality=%D9%A3", "quality=1_0", "viewport=%D9%A3%D9%A3,10", "window=%C2%B9,400"],
)
async def test_rendered_parameters_in_other_digits_are_400(app: App, query: str) -> None:
    url = await stored_multiframe(app)
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        r = await app.client.get(f"{url}{suffix}?{query}")
        assert r.status_code == 400, (suffix, query, r.text)


@pytest.mark.parametrize(
    "frames",
    [
        "%C2%B3",  # a superscript three: str.isdigit() says yes, int() fails
        "%D9%A3",  # an Arabic-Indic three: int() would read 3
        "9" * 5000,
        ",".join(["1"] * 5000),
        ",".join(["1"] * (MAX_FRAMES_PER_REQUEST + 1)),
    ],
)
async def test_frame_lists_that_once_gave_500_are_400(app: App, frames: str) -> None:
    url = await stored_multiframe(app)
    for suffix in ("", "/rendered", "/thumbnail"):
        r = await app.client.get(f"{url}/frames/{frames}{suffix}")
        assert r.status_code == 400, (frames[:20], suffix)
        assert len(r.json()["message"]) < 200


async def test_the_longest_frame_list_allowed_is_served(app: App) -> None:
    url = await stored_multiframe(app)
    r = await app.client.get(f"{url}/frames/" + ",".join(["3"] * MAX_FRAMES_PER_REQUEST))
    assert r.status_code == 200
    assert r.content.count(b"Content-Type: application/octet-stream") == MAX_FRAMES_PER_REQUEST


@pytest.mark.parametrize(
    "path", ["%D9%A3", "7FE00010/%C2%B3", "0009101", "00091010/" + "9" * 5000, "zzzzzzzz"]
)
async def test_bulk_data_paths_that_name_nothing_are_404(app: App, path: str) -> None:
    url = await stored_multiframe(app)
    r = await app.client.get(f"{url}/bulkdata/{path}")
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    "header", ["bytes=1-2-3", "bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 30, "items=1-2"]
)
async def test_odd_ranges_get_the_whole_value(app: App, header: str) -> None:
    url = await stored_multiframe(app)
    r = await app.client.get(
        f"{url}/bulkdata/7FE00010", headers={"Range": header, "Accept": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    assert len(r.content) == 3 * 32 * 32 * 2
