"""A `qwenvl batch` rerun on the same output asks the same question exactly when it would send the service the same
request (``qwenvl.plan.question``): the same question reuses every paid answer (the loopback double receives no
request), another one is refused before anything is sent (exit 2, naming what changed, the output untouched).

Each kind is checked both ways: options that the planning turns into the same request (``--no-thinking`` where
thinking is off by default, ``--thinking`` where it is the only mode, ``--fps`` on still images, explicit defaults
and equivalent budgets), and real changes beside them (thinking switched, another fps for a video, another model
name, budget, temperature, seed, schema, max_tokens). Journals written by earlier versions keep their answers.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import API_KEY, run_cli, write_image
from dashscope_server import Reply
from qwenvl.batch import Batch, BatchItem
from qwenvl.batch.journal import FINGERPRINT_PREFIX, journal_path
from qwenvl.batch.journal import question as item_question
from qwenvl.errors import UsageError
from test_backend_openai import make_video

LEGACY = Path(__file__).parent / "data" / "legacy_journals"


def model_calls(server) -> int:
    return len([r for r in server.requests if r.path.endswith(("/chat/completions", "/generation"))])


class Output:
    """One output and the command that writes it: ``first`` runs it, ``same`` and ``other`` rerun it."""

    def __init__(self, server, inputs: tuple[str, ...], *common: str) -> None:
        self.server, self.out = server, Path("fp.jsonl")
        self.base = ("batch", *inputs, "-o", str(self.out), "--base-url", server.url, "--no-cache", *common)
        self.env = {"DASHSCOPE_API_KEY": API_KEY}

    def first(self, *args: str) -> None:
        before = model_calls(self.server)
        p = run_cli(*self.base, *args, env=self.env)
        assert p.returncode == 0, p.stderr
        self.items = model_calls(self.server) - before
        assert self.items > 0
        self.bytes = self.out.read_bytes()

    def same(self, *args: str) -> None:
        """The same question: every answer reused, nothing sent, the output as it was."""
        before = model_calls(self.server)
        p = run_cli(*self.base, *args, env=self.env)
        assert p.returncode == 0, (args, p.stderr)
        assert model_calls(self.server) == before, (args, "a request was sent for the same question")
        assert self.out.read_bytes() == self.bytes, args

    def other(self, args: tuple[str, ...], named: str) -> None:
        """Another question: refused, exit 2, naming the change; nothing sent or deleted."""
        before = model_calls(self.server)
        p = run_cli(*self.base, *args, env=self.env)
        assert p.returncode == 2, (args, p.stderr)
        assert f"holds answers to another question ({named} changed)" in p.stderr, (args, p.stderr)
        assert f"{self.items} of its {self.items} answered items" in p.stderr and "--fresh" in p.stderr, p.stderr
        assert model_calls(self.server) == before and self.out.read_bytes() == self.bytes, args


@pytest.fixture
def images(isolated_env: Path) -> tuple[str, ...]:
    (isolated_env / "pics").mkdir()
    for name, color in (("a.png", (200, 30, 30)), ("b.png", (30, 200, 30))):
        write_image(isolated_env / "pics" / name, color=color)
    return ("pics",)


# --- thinking ------------------------------------------------------------------------------------------------


def test_no_thinking_where_thinking_is_off_by_default_asks_the_same(server, images):
    out = Output(server, images, "-p", "Caption")
    out.first()
    out.same("--no-thinking")  # qwen3-vl-plus does not think unless asked
    out.same("-m", "qwen3-vl-plus", "--no-thinking")
    out.other(("--thinking", "--max-tokens", "2048"), "--thinking / enable_thinking, --max-tokens / max_tokens")
    out.other(("--thinking",), "--thinking / enable_thinking")


def test_without_no_thinking_after_a_run_with_it_asks_the_same(server, images):
    out = Output(server, images, "-p", "Caption")
    out.first("--no-thinking")
    out.same()
    out.other(("--thinking",), "--thinking / enable_thinking")


def test_no_thinking_on_a_model_that_cannot_think_asks_the_same(server, images):
    out = Output(server, images, "-p", "Caption", "-m", "qwen-vl-max")
    out.first()
    out.same("--no-thinking")


def test_thinking_where_it_is_the_only_mode_asks_the_same(server, images):
    out = Output(server, images, "-p", "Caption", "-m", "qvq-max")
    out.first()
    out.same("--thinking")
    out.other(("--no-thinking",), "--thinking / enable_thinking")  # the service refuses it: another request


# --- media options without their media -----------------------------------------------------------------------


def test_fps_on_still_images_is_refused_and_the_output_kept(server, images):
    """--fps/--video-as apply to videos only: on a folder of still images they are refused (exit 2, nothing sent,
    the output as it was), as every verb refuses an option that does not apply to its input."""
    out = Output(server, images, "-p", "Caption")
    out.first()
    for args in (("--fps", "5"), ("--fps", "0.5", "--video-as", "frames")):
        before = model_calls(server)
        p = run_cli(*out.base, *args, env=out.env)
        assert p.returncode == 2 and "applies to videos only" in p.stderr, (args, p.stderr)
        assert model_calls(server) == before and out.out.read_bytes() == out.bytes, args


def test_fps_of_a_video_is_its_question(server, isolated_env):
    make_video(isolated_env / "clip.mp4")
    out = Output(server, ("clip.mp4",), "-p", "What happens?")
    out.first()
    out.same("--fps", "2")  # the default rate, given
    out.other(("--max-pixels", "20000"), "--detail or --max-pixels / max_pixels")  # it bounds the frames too
    p = run_cli(*out.base, "--detail", "low", env=out.env)  # image budgets: a video's frames follow their own
    assert p.returncode == 2 and "--detail applies to images and PDFs only" in p.stderr, p.stderr
    out.other(("--fps", "1"), "--fps / fps")


# --- model names ---------------------------------------------------------------------------------------------


def test_an_alias_or_a_snapshot_is_another_model_name(server, images):
    """qwenvl sends the name as given (the service resolves ``-latest`` and snapshots itself, and moves them):
    another name is another question, even where qwenvl's table gives both the same rules."""
    out = Output(server, images, "-p", "Caption")
    out.first()
    out.other(("-m", "qwen3-vl-plus-latest"), "--model / model")
    out.other(("-m", "qwen3-vl-plus-2025-12-19"), "--model / model")
    back = Output(server, images, "-p", "Caption", "-m", "qwen3-vl-plus-latest")
    back.out = Path("latest.jsonl")
    back.base = tuple(str(back.out) if a == "fp.jsonl" else a for a in back.base)
    back.first()
    back.base = back.base[:-2]  # without its -m (an option is given once: the CLI refuses it twice)
    back.other(("-m", "qwen3-vl-plus"), "--model / model")


# --- values the planning turns into the same request ---------------------------------------------------------


def test_values_that_plan_the_same_request_ask_the_same(server, images):
    out = Output(server, images, "-p", "Caption")
    out.first()
    out.same("--detail", "auto")
    out.same("--min-pixels", "4096", "--max-pixels", "2621440")  # qwen3-vl-plus's own bounds
    out.same("--no-high-res")  # the service's default
    out.same("-t", "0.2", "--max-tokens", "512", "--max-retries", "0", "--timeout", "30")
    # a smaller budget: smaller images sent
    out.other(("--max-pixels", "1000000"), "--detail or --max-pixels / max_pixels")
    out.other(("--detail", "low"), "--detail or --max-pixels / max_pixels")
    out.other(("--high-res",), "--detail or --high-res / vl_high_resolution_images")
    out.other(("--min-pixels", "8192"), "--detail or --min-pixels / min_pixels")


def test_detail_low_is_its_budget(server, images):
    out = Output(server, images, "-p", "Caption")
    out.first("--detail", "low")
    out.same("--max-pixels", "655360")  # 640 tokens of 32x32 px: qwen3-vl-plus's low-detail budget
    # URLs would get more
    out.other(("--detail", "low", "--max-pixels", "2621440"), "--detail / detail, --max-pixels / max_pixels")


def test_high_resolution_ignores_max_pixels(server, images):
    out = Output(server, images, "-p", "Caption")
    out.first("--high-res")
    out.same("--detail", "high")
    out.same("--high-res", "--max-pixels", "1000000")  # ignored with high resolution, by qwenvl and the service
    out.other(("--high-res", "--min-pixels", "8192"), "--detail or --min-pixels / min_pixels")


def test_a_schema_with_or_without_json_mode_asks_the_same(server, images, isolated_env):
    schema = isolated_env / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"caption": {"type": "string"}}}))
    other = isolated_env / "other.json"
    other.write_text(json.dumps({"type": "object", "properties": {"title": {"type": "string"}}}))
    out = Output(server, images, "-p", "Caption")
    server.enqueue(Reply(text='{"caption": "a picture"}', times=len(images) * 4))  # an answer of its own (the
    # double's echo only quotes the schema, which is no answer: test_library_faults)
    out.first("--schema", str(schema))
    out.same("--schema", str(schema), "--json-mode")
    out.other(("--schema", str(other)), "--schema / schema")
    out.other(("--json-mode",), "--json-mode / json_mode, --schema / schema")


def test_real_changes_are_refused_and_fresh_starts_over(server, images):
    out = Output(server, images, "-p", "Caption")
    out.first("--seed", "3")
    for args, named in (
        (("--seed", "3", "-t", "0.5"), "--temperature / temperature"),
        (("--seed", "4"), "--seed / seed"),
        (("--seed", "3", "--max-tokens", "64"), "--max-tokens / max_tokens"),
        (("--seed", "3", "--system", "Be brief."), "--system / system"),
        (("--seed", "3", "--param", "enable_search=true"), "--param enable_search / extra"),
        ((), "--seed / seed"),
    ):
        out.other(args, named)
    p = run_cli(*out.base, "--seed", "4", "--fresh", "--yes", env=out.env)
    assert p.returncode == 0, p.stderr
    assert model_calls(server) == 2 * out.items
    out.bytes = out.out.read_bytes()
    out.same("--seed", "4", "--no-thinking")


# --- the library and the Batch API ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["compat", "native"])
def test_the_library_reuses_answers_to_the_same_question(server, isolated_env, protocol):
    image = str(write_image(isolated_env / "x.png"))
    asked = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "image": image}) for i in range(3)]
    same = [
        BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "image": [image], "fps": 4.0, "enable_thinking": False})
        for i in range(3)
    ]
    kw = dict(api_key=API_KEY, base_url=server.url, cache=False, protocol=protocol)
    with Batch(asked, "o.jsonl", **kw) as job:
        assert job.run().ok == 3
    with Batch(same, "o.jsonl", **kw) as job:
        assert job.estimate().finished == 3
        assert job.run().sent == 0
    other = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "image": image, "seed": 1}) for i in range(3)]
    changed = r"another question \(seed changed\)"  # the library's words (the CLI's: --seed / seed)
    with Batch(other, "o.jsonl", **kw) as job, pytest.raises(UsageError, match=changed):
        job.estimate()
    assert model_calls(server) == 3


def test_the_batch_api_collects_once_and_reuses_answers_to_the_same_question(isolated_env):
    from batch_server import BatchServer

    image = str(write_image(isolated_env / "x.png"))
    items = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "image": image}) for i in range(2)]
    same = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "image": image, "fps": 3.0}) for i in range(2)]
    with BatchServer(api_key=API_KEY) as srv:
        kw = dict(api_key=API_KEY, base_url=srv.url, mode="batch-api", poll_interval_s=0.01)
        with Batch(items, "o.jsonl", **kw) as job:
            assert job.run().ok == 2
        jobs = len(srv.batch_requests())
        with Batch(same, "o.jsonl", **kw) as job:  # nothing to upload, no job created
            assert job.estimate().finished == 2 and job.run().ok == 2
        assert len(srv.batch_requests()) == jobs
        other = [BatchItem(id=f"i{i}", request={"prompt": f"p{i}", "image": image, "max_tokens": 9}) for i in range(2)]
        changed = r"\(max_tokens changed\)"
        with Batch(other, "o.jsonl", **kw) as job, pytest.raises(UsageError, match=changed):
            job.estimate()
        assert len(srv.batch_requests()) == jobs


def test_a_local_model_keeps_thinking_as_given():
    """A local model's defaults are its server's, not the table's: thinking given is a question of its own (the
    media rules, which are qwenvl's, still apply)."""
    fields = {"prompt": "p", "image": "a.png", "enable_thinking": False, "fps": 3.0}
    local = item_question(fields, {"model": "qwen3-vl-plus"}, local=True)
    assert local["enable_thinking"] is False and "fps" not in local
    assert "enable_thinking" not in item_question(fields, {"model": "qwen3-vl-plus"})


# --- journals of earlier versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["l0", "l1"])
def test_a_journal_of_an_earlier_version_keeps_its_answers(server, isolated_env, version):
    """``l1``: written by main up to this change; ``l0``: by main before 2026-11-30 13:34 (raw fields). The same
    command reuses every answer, the rows take this version's fingerprints, and from then on the new
    equivalences apply; another question is refused, naming what changed."""
    for f in (LEGACY / version).iterdir():
        if f.suffix != ".py":
            shutil.copy(f, isolated_env / f.name)
    before = Path("out.jsonl").read_bytes()
    base = ("batch", "--requests", "requests.jsonl", "-o", "out.jsonl", "--base-url", server.url, "--no-cache")
    env = {"DASHSCOPE_API_KEY": API_KEY}
    p = run_cli(*base, "--max-tokens", "8", "-t", "0", env=env)
    assert p.returncode == 2 and "another question (--max-tokens / max_tokens changed)" in p.stderr, p.stderr
    p = run_cli(*base, "--max-tokens", "16", "-t", "0", env=env)
    assert p.returncode == 0, p.stderr
    assert model_calls(server) == 0 and Path("out.jsonl").read_bytes() == before
    with sqlite3.connect(journal_path(Path("out.jsonl"))) as conn:
        fps = [fp for (fp,) in conn.execute("SELECT fingerprint FROM items WHERE status = 'ok'")]
    assert len(fps) == 3 and all(fp.startswith(FINGERPRINT_PREFIX) for fp in fps)
    p = run_cli(*base, "--max-tokens", "16", "-t", "0", "--no-thinking", env=env)
    assert p.returncode == 0 and model_calls(server) == 0, p.stderr
    p = run_cli(*base, "--max-tokens", "16", "-t", "0.5", env=env)
    assert p.returncode == 2 and "another question (--temperature / temperature changed)" in p.stderr, p.stderr
    assert model_calls(server) == 0 and Path("out.jsonl").read_bytes() == before
