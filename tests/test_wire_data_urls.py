"""Issue 8 item 3: what is sent is the canonical form of what was checked (data: URLs)."""

from __future__ import annotations

import base64
import textwrap

import pytest

from conftest import make_client


def _wrapped(data: bytes, mime: str = "image/png", params: str = "") -> str:
    b64 = "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76))  # what `base64` prints
    return f"data:{mime}{params};base64,{b64}"


@pytest.mark.parametrize("variant", ["wrapped", "charset", "both", "prepare-false"])
def test_data_urls_are_sent_canonically(server, protocol, png, variant):
    data = png.read_bytes()
    url = {
        "wrapped": _wrapped(data),
        "charset": _wrapped(data, params=";charset=utf-8").replace("\n", ""),
        "both": _wrapped(data, params=";charset=utf-8"),
        "prepare-false": _wrapped(data),
    }[variant]
    canonical = "data:image/png;base64," + base64.b64encode(data).decode()
    with make_client(server, protocol) as c:
        r = c.complete(prompt="what", image=url, prepare=variant != "prepare-false")
        assert r.text.endswith("[images=1 videos=0]")  # the fake refuses what the service refuses
    body = server.requests[-1].json
    msg = (body["messages"] if protocol == "compat" else body["input"]["messages"])[-1]["content"][0]
    sent = msg["image_url"]["url"] if protocol == "compat" else msg["image"]
    assert sent == canonical


def test_frame_list_of_data_urls_is_canonical(server, protocol, png):
    data = png.read_bytes()
    frames = [_wrapped(data, params=";charset=utf-8")] * 4
    with make_client(server, protocol) as c:
        c.complete(prompt="what", video=frames)
    body = server.requests[-1].json
    msg = (body["messages"] if protocol == "compat" else body["input"]["messages"])[-1]["content"][0]
    assert all("\n" not in f and ";charset" not in f and f.startswith("data:image/") for f in msg["video"])
