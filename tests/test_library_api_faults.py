"""Faults a new user integrating the library met, each as a kind: lifecycle misuse from threads and loops ends
as ClientClosedError, a pydantic validator's refusal is said about the answer, the typed API holds under
``mypy --strict``, wrong-typed objects are refused at construction, a conversation takes one turn at a time,
and other APIs' names of a field are understood. Against the loopback DashScope double."""

from __future__ import annotations

import pytest

from conftest import make_client
from qwenvl.chat import Conversation
from qwenvl.errors import UsageError
from qwenvl.spelling import nearest

# --- other APIs' names of a request field: the suggestion is the field meant ------------------------------------


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("thinking", "enable_thinking"),
        ("max_new_tokens", "max_tokens"),
        ("max_completion_tokens", "max_tokens"),
        ("system_prompt", "system"),
        ("budget_tokens", "thinking_budget"),
    ],
)
def test_another_apis_name_of_a_field_suggests_the_field(server, given, meant):
    with make_client(server, usage_log=False) as client:
        with pytest.raises(UsageError) as err:
            client.complete(prompt="hi", **{given: 1})
        assert f"'{meant}'" in (err.value.hint or ""), err.value.hint
        conv = Conversation(client, fields={given: True})
        with pytest.raises(UsageError) as err:
            conv.send("hi")
        assert f"'{meant}'" in (err.value.hint or "") + str(err.value)
    assert not server.requests


def test_aliases_fit_flags_and_need_the_field_among_the_choices():
    assert nearest("--max-new-tokens", ["--max-tokens", "--model"]) == "--max-tokens"
    assert nearest("thinking", ["enable_thinking", "thinking_budget"]) == "enable_thinking"
    assert nearest("thinking", ["thinking_budget", "model"]) == "thinking_budget"  # no alias target: the ratio
    assert "enable_thinking" in (Conversation.__doc__ or "")
    assert "``thinking``" not in (Conversation.__doc__ or "")
