"""serve's refusals name fields in the words of the protocol asked (compat's ``video_url``, native's
``parameters.KEY``), and compat's error body fills ``param`` with the field at fault, as OpenAI's does."""

from __future__ import annotations

import base64

import httpx

from dashscope_server import DashScopeServer
from test_serve import COMPAT, NATIVE
from test_serve_faults import HEADERS, MODEL, gateway_to

MP4 = (
    "data:video/mp4;base64,"
    + base64.b64encode(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64)).decode()
)


def test_a_video_sent_as_an_image_is_told_in_each_protocols_words(server: DashScopeServer) -> None:
    with gateway_to(server.url) as s:
        compat = {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": MP4}}]}],
        }
        r = httpx.post(s.url + COMPAT, json=compat, headers=HEADERS, timeout=30)
        assert r.status_code == 400, r.text
        said = r.json()["error"]["message"]
        assert '"video_url"' in said and '"video")' not in said, said
        native = {"model": MODEL, "input": {"messages": [{"role": "user", "content": [{"image": MP4}]}]}}
        r = httpx.post(s.url + NATIVE, json=native, headers=HEADERS, timeout=30)
        assert r.status_code == 400, r.text
        assert '"video"' in r.json()["message"] and "video_url" not in r.json()["message"], r.text


def test_compat_errors_name_the_field_in_param(server: DashScopeServer) -> None:
    with gateway_to(server.url) as s:
        for body, param in (
            ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, "max_tokens"),
            ({"model": MODEL, "messages": []}, "messages"),
            ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, None),
        ):
            r = httpx.post(s.url + COMPAT, json=body, headers=HEADERS, timeout=30)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            if param is None:  # a field deeper in: named as the message names it
                assert error["param"] and error["message"].startswith(error["param"]), error
            else:
                assert error["param"] == param, error
        r = httpx.post(s.url + COMPAT, json={"model": MODEL}, headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.json()["error"]["param"] is None  # no field at fault
