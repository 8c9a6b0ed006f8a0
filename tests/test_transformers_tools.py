"""Tool calls on the transformers backend: tiny random Qwen-VL models built here, generating for real.

A random model writes no tool call of its own, so its generation is steered: a LogitsProcessor (handed to the
real ``model.generate`` through ``generate_kwargs``, the one seam patched) leaves only the next token of a chosen
answer possible. Everything else is the product's path: chat template with the tools, generation, decoding,
reading the <tool_call> blocks, the stream, and ``qwenvl serve`` answering the official ``openai`` SDK."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

try:
    import torch
    import transformers
except ImportError as exc:
    pytest.skip(f"{exc.name} is not installed (pip install 'qwenvl[local]')", allow_module_level=True)

import qwenvl
from qwenvl.backends import transformers as tb
from qwenvl.errors import UsageError
from qwenvl.types import Message
from tiny_models import build

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL_TEXT = 'I will look it up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = "It is sunny in Paris."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-tools")
    return {f: build(f, root / f) for f in ("qwen2.5-vl", "qwen3-vl")}


class Forced(transformers.LogitsProcessor):
    """Leaves one token possible at each step: those of ``choose(prompt)``, then end of turn. Keeps the prompt."""

    def __init__(self, tok: Any, choose: Callable[[str], str]) -> None:
        self.tok, self.choose = tok, choose
        self.start: int | None = None
        self.prompt = ""
        self.target: list[int] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.start is None:
            self.start = int(input_ids.shape[1])
            self.prompt = self.tok.decode(input_ids[0])
            self.target = self.tok.encode(self.choose(self.prompt), add_special_tokens=False)
        step = int(input_ids.shape[1]) - self.start
        token = self.target[step] if step < len(self.target) else self.tok.convert_tokens_to_ids("<|im_end|>")
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


@pytest.fixture
def steer(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str], str]], list[Forced]]:
    """steer(choose) -> the list of each generation's Forced (its prompt is in .prompt)."""

    def install(choose: Callable[[str], str]) -> list[Forced]:
        seen: list[Forced] = []
        real = tb.generate_kwargs

        def steered(call: Any, loaded: Any) -> dict[str, Any]:
            kw = real(call, loaded)
            seen.append(Forced(loaded.tokenizer, choose))
            kw["logits_processor"] = transformers.LogitsProcessorList([seen[-1]])
            return kw

        monkeypatch.setattr(tb, "generate_kwargs", steered)
        return seen

    return install


def call_then_answer(prompt: str) -> str:
    return ANSWER if "<tool_response>" in prompt else CALL_TEXT


def args_of(calls: list[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls or []]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_call_then_result_then_answer_complete_and_stream(models, family, steer, isolated_env):
    seen = steer(call_then_answer)
    with qwenvl.Client(backend="transformers", model=str(models[family])) as client:
        r = client.complete(prompt="Weather in Paris?", tools=TOOLS, temperature=0, max_tokens=80)
        assert seen[-1].prompt.count('"name": "get_weather"') == 1 and "<tools>" in seen[-1].prompt
        assert args_of(r.tool_calls) == [("get_weather", {"city": "Paris"})]
        assert r.text == "I will look it up." and r.finish_reason == "tool_calls"
        assert r.tool_calls[0]["id"].startswith("call_") and r.usage.output_tokens == len(seen[-1].target) + 1
        assert r.messages[-1].tool_calls == r.tool_calls

        events = list(client.stream(prompt="Weather in Paris?", tools=TOOLS, temperature=0, max_tokens=80))
        assert "".join(e.text for e in events if e.type == "text") == "I will look it up."
        done = events[-1].response
        assert done.finish_reason == "tool_calls" and args_of(done.tool_calls) == args_of(r.tool_calls)

        result = Message(role="tool", content="sunny, 21 C", tool_call_id=r.tool_calls[0]["id"])
        second = client.complete(messages=[*r.messages, result], tools=TOOLS, temperature=0, max_tokens=80)
        prompt = seen[-1].prompt
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
        assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
        assert second.text == ANSWER and second.tool_calls is None and second.finish_reason == "stop"
        streamed = list(client.stream(messages=[*r.messages, result], tools=TOOLS, temperature=0, max_tokens=80))
        assert "".join(e.text for e in streamed if e.type == "text") == ANSWER


def test_tool_choice_none_malformed_calls_and_refusals(models, steer, isolated_env):
    folder = str(models["qwen2.5-vl"])
    seen = steer(lambda prompt: CALL_TEXT)
    with qwenvl.Client(backend="transformers", model=folder) as client:
        r = client.complete(prompt="Weather?", tools=TOOLS, tool_choice="none", temperature=0, max_tokens=80)
        assert "<tools>" in seen[-1].prompt  # vLLM's default: the tools stay in the prompt, the answer is text
        assert r.text == CALL_TEXT and r.tool_calls is None and r.finish_reason == "stop"
        steer(lambda prompt: 'Hm.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>')
        bad = client.complete(prompt="Weather?", tools=TOOLS, temperature=0, max_tokens=80)
        assert bad.tool_calls is None and bad.text.startswith("Hm.\n<tool_call>") and bad.finish_reason == "stop"
        events = list(client.stream(prompt="Weather?", tools=TOOLS, temperature=0, max_tokens=80))
        assert "".join(e.text for e in events if e.type == "text") == bad.text  # the held-back text is given
        steer(lambda prompt: "No tools needed.")
        plain = client.complete(prompt="Hi", tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=40)
        assert plain.text == "No tools needed." and plain.tool_calls is None and plain.finish_reason == "stop"
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            with pytest.raises(UsageError, match="constrained decoding"):
                client.complete(prompt="Weather?", tools=TOOLS, tool_choice=choice, max_tokens=8)
            with pytest.raises(UsageError, match="constrained decoding"):
                list(client.stream(prompt="Weather?", tools=TOOLS, tool_choice=choice, max_tokens=8))
        with pytest.raises(UsageError, match="unknown tool_choice 'autoo'"):
            client.complete(prompt="Weather?", tools=TOOLS, tool_choice="autoo", max_tokens=8)


VL_ONLY_TEMPLATE = (  # a processor template with no tools section, as Qwen2.5-VL's chat_template.json
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_the_processor_template_first_and_the_one_that_renders_tools(models, steer, isolated_env):
    """Qwen2.5-VL's layout: chat_template.json (images, no tools) beside the tokenizer's template (tools)."""
    from conftest import write_image

    layout = isolated_env / "qwen25-layout"
    shutil.copytree(models["qwen2.5-vl"], layout)
    (layout / "chat_template.json").write_text(json.dumps({"chat_template": VL_ONLY_TEMPLATE}))
    img = write_image(isolated_env / "a.png", (56, 56))
    seen = steer(lambda prompt: "Fine.")
    with qwenvl.Client(backend="transformers", model=str(layout)) as client:
        client.complete(prompt="What is it?", image=str(img), temperature=0, max_tokens=8)
        assert seen[-1].prompt.startswith("<|im_start|>user\n<|vision_start|>")  # the processor's: no system turn
        client.complete(prompt="Weather?", tools=TOOLS, temperature=0, max_tokens=8)
        assert "<tools>" in seen[-1].prompt and "get_weather" in seen[-1].prompt  # the tokenizer's
    nothing = isolated_env / "no-tools-anywhere"
    shutil.copytree(layout, nothing)
    config = json.loads((nothing / "tokenizer_config.json").read_text())
    config["chat_template"] = VL_ONLY_TEMPLATE
    (nothing / "tokenizer_config.json").write_text(json.dumps(config))
    (nothing / "chat_template.jinja").unlink(missing_ok=True)
    with qwenvl.Client(backend="transformers", model=str(nothing)) as client:
        with pytest.raises(UsageError, match="does not render tools") as info:
            client.complete(prompt="Weather?", tools=TOOLS, max_tokens=8)
        assert "Qwen3-VL" in (info.value.hint or "")
        assert client.complete(prompt="Hi", temperature=0, max_tokens=4).text is not None  # no tools: fine


def test_serve_tools_round_trip_with_the_openai_sdk(models, steer, isolated_env):
    openai = pytest.importorskip("openai")
    from qwenvl.server.app import ServeSettings, create_app
    from test_serve import SERVE_KEY, Served

    seen = steer(call_then_answer)
    client = qwenvl.AsyncClient(backend="transformers", model=str(models["qwen3-vl"]), device="cpu")
    with Served(create_app(client, ServeSettings(api_key=SERVE_KEY, pass_model_names=False))) as s:
        sdk = openai.OpenAI(base_url=s.url + "/compatible-mode/v1", api_key=SERVE_KEY, max_retries=0, timeout=120)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
        first = sdk.chat.completions.create(
            model="qwen3-vl-plus", messages=messages, tools=TOOLS, temperature=0, max_tokens=80
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "I will look it up."
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        assert "<tools>" in seen[-1].prompt

        chunks = list(
            sdk.chat.completions.create(
                model="qwen3-vl-plus", messages=messages, tools=TOOLS, temperature=0, max_tokens=80, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text == "I will look it up." and finishes == ["tool_calls"]
        assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
            ("get_weather", {"city": "Paris"})
        ]

        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ]
        final = sdk.chat.completions.create(
            model="qwen3-vl-plus", messages=messages, tools=TOOLS, temperature=0, max_tokens=80
        )
        assert final.choices[0].message.content == ANSWER and final.choices[0].finish_reason == "stop"
        assert "<tool_response>\nsunny, 21 C\n</tool_response>" in seen[-1].prompt
        assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in seen[-1].prompt
        with pytest.raises(openai.BadRequestError, match="constrained decoding"):
            sdk.chat.completions.create(
                model="qwen3-vl-plus", messages=messages, tools=TOOLS, tool_choice="required", max_tokens=8
            )


def test_serve_tools_round_trip_with_the_dashscope_sdk(models, steer, isolated_env):
    dashscope = pytest.importorskip("dashscope")
    from qwenvl.server.app import ServeSettings, create_app
    from test_serve import SERVE_KEY, Served

    seen = steer(call_then_answer)
    client = qwenvl.AsyncClient(backend="transformers", model=str(models["qwen3-vl"]), device="cpu")
    app = create_app(client, ServeSettings(api_key=SERVE_KEY, pass_model_names=False))
    with Served(app) as s, pytest.MonkeyPatch.context() as mp:
        mp.setattr(dashscope, "base_http_api_url", s.url + "/api/v1")
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]
        r = dashscope.MultiModalConversation.call(
            api_key=SERVE_KEY, model="qwen3-vl-plus", messages=messages, tools=TOOLS, max_tokens=80
        )
        assert r.status_code == 200, (r.code, r.message)
        choice = r.output.choices[0]
        assert choice.finish_reason == "tool_calls" and "<tools>" in seen[-1].prompt
        calls = choice.message.tool_calls
        assert args_of(calls) == [("get_weather", {"city": "Paris"})]
        messages += [
            {"role": "assistant", "content": [{"text": ""}], "tool_calls": calls},
            {"role": "tool", "content": "sunny, 21 C", "tool_call_id": calls[0]["id"], "name": "get_weather"},
        ]
        final = dashscope.MultiModalConversation.call(
            api_key=SERVE_KEY, model="qwen3-vl-plus", messages=messages, tools=TOOLS, max_tokens=80
        )
        assert final.status_code == 200, (final.code, final.message)
        assert final.output.choices[0].message.content == [{"text": ANSWER}]
        assert "<tool_response>\nsunny, 21 C\n</tool_response>" in seen[-1].prompt
