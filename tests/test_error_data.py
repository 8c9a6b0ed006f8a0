"""What code decides from an error is data on the error (``UsageError.field``, ``MediaError.not_an_image``), never
its words: rewording a message changes no behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

import qwenvl
import qwenvl.config
import qwenvl.media.images
from conftest import run_cli, write_image
from qwenvl.errors import MediaError, UsageError
from qwenvl.estimate import estimate_files


@pytest.fixture
def reworded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message and hint of an unknown region and of content that is no image, said in other words."""
    region, not_an_image = qwenvl.config.normalize_region, qwenvl.media.images._not_an_image

    def other_region(name: str | None) -> str:
        try:
            return region(name)
        except UsageError as exc:
            exc.message, exc.hint = "no such place to send requests", "Pick another."
            raise

    def other_content(data: bytes, label: str) -> MediaError:
        exc = not_an_image(data, label)
        exc.message, exc.hint = f"{label}: cannot read it", "Give a picture."
        return exc

    monkeypatch.setattr(qwenvl.config, "normalize_region", other_region)
    monkeypatch.setattr(qwenvl.media.images, "_not_an_image", other_content)


@pytest.mark.parametrize("words", ["as written", "reworded"])
def test_an_estimates_unknown_region_keeps_its_own_hint(request, words):
    if words == "reworded":
        request.getfixturevalue("reworded")
    with pytest.raises(UsageError) as caught:
        estimate_files(["x.png"], region="mars")
    assert caught.value.field == "region"
    assert caught.value.hint == f"{qwenvl.config.UNKNOWN_REGION_HINT}."  # not the hint naming --base-url


@pytest.mark.parametrize("words", ["as written", "reworded"])
@pytest.mark.parametrize(("name", "said"), [("fake.pdf", "is not a PDF (it holds text"), ("bad.mp4", "(it holds text")])
def test_text_meant_as_a_pdf_or_a_video_is_said_to_hold_text(request, isolated_env: Path, words, name, said):
    if words == "reworded":
        request.getfixturevalue("reworded")
    (isolated_env / name).write_text("hello, I am text\n")
    (isolated_env / "odd.mp4").write_bytes(b"\x00\x01\xfe\xff" * 64)  # no text, no format known
    with qwenvl.Client(api_key="sk-test", base_url="http://127.0.0.1:9") as client:
        with pytest.raises(MediaError) as caught:
            client.plan(prompt="x", image=str(isolated_env / name))
        assert said in caught.value.message and caught.value.not_an_image == "text", caught.value.message
        with pytest.raises(MediaError) as caught:
            client.plan(prompt="x", image=str(isolated_env / "odd.mp4"))
        assert "neither a video nor an image" in caught.value.message, caught.value.message
        assert "(unknown format)" in caught.value.message and caught.value.not_an_image == "unknown"


def test_tokens_says_estimate_only_once_whatever_the_notes_words(monkeypatch, isolated_env: Path):
    """``qwenvl tokens --fast``: the table says "Estimate only" once below, not each item's note; which notes those
    are is the notes' one home (``prepare.ESTIMATE_NOTES``), not a prefix of their words."""
    import qwenvl.cli.tokens
    import qwenvl.media.prepare as prepare

    note = "from the header alone: sizes and tokens not decoded"
    notes = (note, getattr(prepare, "VIDEO_ESTIMATE_NOTE", None))
    monkeypatch.setattr(prepare, "ESTIMATE_NOTE", note)
    monkeypatch.setattr(prepare, "ESTIMATE_NOTES", notes, raising=False)
    monkeypatch.setattr(qwenvl.cli.tokens, "ESTIMATE_NOTES", notes, raising=False)
    files = [str(write_image(isolated_env / f"p{i}.png", (800 + i, 600))) for i in range(2)]
    p = run_cli("tokens", "--fast", *files)
    assert p.returncode == 0, p.stderr
    assert note not in p.stdout + p.stderr and p.stdout.count("Estimate only:") == 1, p.stdout
