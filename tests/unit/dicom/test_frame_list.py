"""frames.parse_frame_list (PS3.18 §10.4.1.1.4): ASCII digits, bounded numbers, a bounded list."""

from __future__ import annotations

import pytest

from dicomweb_server.dicom.frames import MAX_FRAME_NUMBER, MAX_FRAMES_PER_REQUEST, parse_frame_list
from dicomweb_server.errors import BadRequest


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("1", [1]),
        ("1,2,3", [1, 2, 3]),
        ("3,3", [3, 3]),
        (str(MAX_FRAME_NUMBER), [MAX_FRAME_NUMBER]),
    ],
)
def test_frame_lists(text: str, numbers: list[int]) -> None:
    assert parse_frame_list(text) == numbers


def test_the_longest_list_allowed() -> None:
    assert parse_frame_list(",".join(["1"] * MAX_FRAMES_PER_REQUEST)) == [1] * MAX_FRAMES_PER_REQUEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "-1",
        "1,",
        "1,,2",
        "x",
        "1.5",
        "+1",
        "1_0",
        "\u00b3",  # superscript three: str.isdigit() is True, int() fails
        "\u0663",  # Arabic-Indic three: int() would read it as 3
        "\uff11",  # fullwidth one
        " 4 , 2",  # no spaces (an outsider's probe: they were stripped)
        "\t1",
        "\u20091",  # thin space: str.strip() takes it
        "1,\u00a02",  # no-break space
        str(MAX_FRAME_NUMBER + 1),
        "9" * 5000,  # beyond int()'s digit limit
    ],
)
def test_bad_frame_lists_are_400(text: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_frame_list(text)
    assert "Frame list" in raised.value.message
    assert len(raised.value.message) < 200  # the message quotes the item, shortened, never the list


def test_a_list_longer_than_the_cap_is_400() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_frame_list(",".join(["1"] * 5000))
    assert str(MAX_FRAMES_PER_REQUEST) in raised.value.message
