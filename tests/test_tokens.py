"""Token and cost estimates, and the `qwenvl tokens` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import media_corpus as corpus
from conftest import run_cli
from qwenvl.cli.tokens import tokens as tokens_command
from qwenvl.media.tokens import estimate_image_tokens, image_tokens, video_tokens
from qwenvl.models import estimate_cost, model_info


def test_image_tokens_formula() -> None:
    assert image_tokens(1376, 1856, 32) == 1376 * 1856 // 1024 + 2 == 2496
    assert image_tokens(504, 504, 28) == 326


@pytest.mark.parametrize(
    ("size", "high_res", "expected"),
    [
        ((512, 512), False, 326),  # seed doc 002's table for qwen-vl-max (28 px, 1280 tokens)
        ((1280, 1280), False, 1227),
        ((1280, 1280), True, 2118),
    ],
)
def test_seed_doc_token_examples(size: tuple[int, int], high_res: bool, expected: int) -> None:
    budget = (16384 if high_res else 1280) * 784
    assert estimate_image_tokens(*size, 28, 4 * 784, budget) == expected


def test_small_images_cost_at_least_four_tokens() -> None:
    assert estimate_image_tokens(11, 11, 32, 4 * 1024, 2560 * 1024) == 4 + 2


def test_video_tokens() -> None:
    # ceil(nframes / 2) temporal groups of (h/32)*(w/32) tokens, plus 2
    assert video_tokens(16, 448, 640, 32) == 8 * 14 * 20 + 2
    assert video_tokens(5, 448, 640, 32) == 3 * 14 * 20 + 2
    assert video_tokens(4, 252, 448, 28) == 2 * 9 * 16 + 2
    assert video_tokens(0, 448, 640, 32) == 0


def test_cost_from_the_price_table() -> None:
    plus = model_info("qwen3-vl-plus")
    assert estimate_cost(plus, 2496) == pytest.approx(2496 * 1.0 / 1e6)  # 1 CNY per 1M input (≤32K)
    assert estimate_cost(plus, 1000, 100) == pytest.approx((1000 * 1.0 + 100 * 10.0) / 1e6)
    assert estimate_cost(model_info("qwen9-vl-future"), 1000) is None  # unknown model: no price


# --- the command -----------------------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(tokens_command, list(args))
    return result.exit_code, result.output, result.exception


def run_verb(*args: str) -> tuple[int, str]:
    """Through the `qwenvl` group, which turns errors into messages and exit codes."""
    from qwenvl.cli.main import cli

    result = CliRunner().invoke(cli, ["tokens", *args])
    return result.exit_code, result.output


def test_tokens_table(tmp_path: Path) -> None:
    photo = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    shot = corpus.screenshot_png(tmp_path)
    code, out, _ = run(str(photo), str(shot), "https://example.com/x.jpg")
    assert code == 0, out
    assert "1856x1376 JPEG" in out and "2,496" in out
    assert "1200x800 PNG" in out
    assert "unknown (remote)" in out and "+ 1" in out
    assert "¥" in out


def test_tokens_json(tmp_path: Path) -> None:
    photo = corpus.photo_jpeg(tmp_path, size=(4000, 3000))
    code, out, _ = run(str(photo), "--json")
    assert code == 0, out
    data = json.loads(out)
    item = data["items"][0]
    assert (item["width"], item["height"], item["tokens"]) == (1856, 1376, 2496)
    assert data["total"]["tokens"] == 2496 and data["currency"] == "CNY"
    assert data["total"]["cost"] == pytest.approx(item["cost"])


def test_tokens_options_change_the_budget(tmp_path: Path) -> None:
    photo = str(corpus.photo_jpeg(tmp_path, size=(4000, 3000)))

    def total(*args: str) -> int:
        code, out, exc = run(photo, "--json", *args)
        assert code == 0, (out, exc)
        return json.loads(out)["total"]["tokens"]

    default = total()
    assert total("--detail", "low") < default < total("--high-res")
    assert total("--max-pixels", "500000") <= 500_000 // 1024 + 2
    assert total("--model", "qwen2.5-vl-7b-instruct") <= 1280 + 2
    assert total("--no-resize") == default  # the service resizes it the same way


def test_tokens_unknown_price(tmp_path: Path) -> None:
    code, out, _ = run(str(corpus.screenshot_png(tmp_path)), "--model", "qwen9-vl-future", "--json")
    assert code == 0
    assert json.loads(out)["items"][0]["cost"] is None
    code, out, _ = run(str(corpus.screenshot_png(tmp_path)), "--model", "qwen9-vl-future")
    assert "unknown" in out


def test_tokens_bad_file_is_its_row_and_the_others_go_on(tmp_path: Path) -> None:
    tiny, shot = corpus.tiny_png(tmp_path), corpus.screenshot_png(tmp_path)
    code, out, _ = run(str(tiny), str(tmp_path / "gone.jpg"), str(shot), "--json")
    assert code == 3, out
    data = json.JSONDecoder().raw_decode(out[out.index("{") :])[0]  # stderr follows in the output
    rows = {Path(r["source"]).name: r for r in data["items"]}
    assert "more than 10 px" in rows[tiny.name]["error"] and "not found" in rows["gone.jpg"]["error"]
    assert rows[shot.name]["tokens"] > 0  # the good file after the bad ones is still estimated
    assert data["total"] == {
        "tokens": rows[shot.name]["tokens"],
        "cost": rows[shot.name]["cost"],
        "items": 1,
        "unknown": 0,
        "failed": 2,
    }
    code, out, _ = run(str(tiny), str(shot))  # the table: the bad file on its own row, then the total
    assert code == 3 and "more than 10 px" in out and "1200x800 PNG" in out and "total (1 item)" in out


def test_tokens_takes_folders_as_batch_does(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    corpus.screenshot_png(folder)
    Image.new("RGB", (64, 48)).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not media")
    (folder / ".hidden.png").write_bytes(b"")
    code, out, _ = run(str(folder), "--json")
    assert code == 0, out
    from qwenvl.batch.inputs import expand_inputs

    assert [r["source"] for r in json.loads(out)["items"]] == expand_inputs([str(folder)])
    assert len(json.loads(out)["items"]) == 2
    code, out = run_verb(str(tmp_path / "empty*.png"))
    assert code == 3 and "no file matches" in out  # an input error, as a missing folder


def test_tokens_model_and_region_as_every_verb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shot = str(corpus.screenshot_png(tmp_path))
    monkeypatch.setenv("QWENVL_MODEL", "qwen2.5-vl-7b-instruct")  # as Client(): the environment's model
    code, out, _ = run(shot, "--json")
    assert code == 0 and json.loads(out)["model"] == "qwen2.5-vl-7b-instruct"
    code, out, _ = run(shot, "--json", "--model", "qwen3-vl-flash", "--region", "intl")
    assert code == 0 and json.loads(out)["model"] == "qwen3-vl-flash"
    code, out = run_verb(shot, "--region", "mars")
    assert code == 2 and "unknown region 'mars'" in out and "--base-url" not in out
    code, out = run_verb(shot, "--model", "")
    assert code == 2 and "--model is empty" in out
    code, out = run_verb(shot, "--min-pixels", "2000000", "--max-pixels", "100000")
    assert code == 2 and "min_pixels is larger than max_pixels" in out


def test_tokens_through_the_cli_group(tmp_path: Path) -> None:
    from qwenvl.cli.main import cli

    result = CliRunner().invoke(cli, ["tokens", str(corpus.svg(tmp_path))])
    assert result.exit_code == 3
    assert "SVG" in result.output


def test_tokens_pdf_and_video(tmp_path: Path) -> None:
    import av
    import numpy as np

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), i * 8, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    pdf = tmp_path / "doc.pdf"
    pages = [Image.new("RGB", (600, 800), "white"), Image.new("RGB", (800, 600), "white")]
    pages[0].save(pdf, save_all=True, append_images=pages[1:])

    code, out, exc = run(str(clip), str(pdf), "--json")
    assert code == 0, (out, exc)
    items = json.loads(out)["items"]
    video, *document = items
    assert video["kind"] == "video" and video["frames"] >= 4 and video["tokens"] > 0
    assert len(document) == 2 and all(i["kind"] == "image" and i["tokens"] for i in document)
    assert [(d["source"], d["page"]) for d in document] == [(str(pdf), 1), (str(pdf), 2)]  # the real page numbers


def test_tokens_fast_matches_full_preparation(isolated_env):
    Image.new("RGB", (4000, 3000), (90, 140, 30)).save(isolated_env / "big.jpg", quality=90)
    full = json.loads(run_cli("tokens", "big.jpg", "--json").stdout)["items"][0]
    fast = json.loads(run_cli("tokens", "big.jpg", "--json", "--fast").stdout)["items"][0]
    assert (full["width"], full["height"], full["tokens"]) == (fast["width"], fast["height"], fast["tokens"])
    assert full["bytes_sent"] > 0 and fast["bytes_sent"] is None  # not computed: null, never a false 0
