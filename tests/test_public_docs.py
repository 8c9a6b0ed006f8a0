"""The front door is documented: every name in ``qwenvl.__all__`` and every public member of ``Client`` and
``AsyncClient`` has its own docstring; each callable says what it raises ("Raises ...", or "Raises nothing"),
each error class when it is raised, and every exception a docstring names exists. ``Request`` and ``Response``
fields carry a description (their JSON schema shows it). The client Protocols of ``qwenvl.interfaces`` are met by
both clients and by a wrapper that subclasses nothing, with a real loopback server behind it.

``python tests/test_public_docs.py`` prints the coverage numbers.
"""

from __future__ import annotations

import builtins
import inspect
import re
import types
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest

import qwenvl
from conftest import make_client, write_image
from dashscope_server import Reply
from qwenvl import interfaces

RAISES = re.compile(r"\b(Raises|raises|Raised|raised)\b")
NAMED_ERROR = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Interrupt))\b")


@dataclass
class Item:
    name: str
    doc: str | None
    needs_raises: bool  # a callable: says what it raises (or "Raises nothing")
    error: bool = False  # an error class: says when it is raised


def _own_doc(obj: Any) -> str | None:
    """The object's own docstring: not inherited, not the signature a dataclass makes up when it has none."""
    if isinstance(obj, property):
        obj = obj.fget
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and doc and doc.startswith(obj.__name__ + "("):  # dataclasses' made-up docstring
        return None
    return inspect.cleandoc(doc) if doc and doc.strip() else None


def _members(cls: type) -> list[tuple[str, Any]]:
    """The public methods and properties ``cls`` defines in qwenvl (not those of pydantic, object, Exception)."""
    out = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        for klass in cls.__mro__:
            if name in klass.__dict__:
                if not klass.__module__.startswith("qwenvl"):
                    break
                value = klass.__dict__[name]
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                func = value.fget if isinstance(value, property) else value
                if inspect.isfunction(func) and func.__module__.startswith("qwenvl"):  # not pydantic's own
                    out.append((name, value))
                break
    return out


def _exported() -> list[tuple[str, Any]]:
    """``qwenvl.__all__``, ``qwenvl.tasks.__all__`` and the estimate behind ``qwenvl tokens``."""
    from qwenvl import estimate, tasks

    names = [(name, getattr(qwenvl, name)) for name in qwenvl.__all__]
    names += [(f"tasks.{name}", getattr(tasks, name)) for name in tasks.__all__]
    return [*names, ("estimate.estimate_files", estimate.estimate_files)]


def public_api() -> list[Item]:
    items: list[Item] = []
    for name, obj in _exported():
        if name == "__version__" or isinstance(obj, types.UnionType):  # a string; a type alias of listed types
            continue
        error = isinstance(obj, type) and issubclass(obj, Exception)
        items.append(Item(name, _own_doc(obj), needs_raises=not error, error=error))
        if isinstance(obj, type) and not error:
            client = obj in (qwenvl.Client, qwenvl.AsyncClient)
            for member, value in _members(obj):
                # every client member says what it raises; elsewhere methods do, plain data properties need not
                needs = client or not isinstance(value, property)
                items.append(Item(f"{name}.{member}", _own_doc(value), needs_raises=needs))
    return items


def coverage(items: list[Item]) -> dict[str, int]:
    needs = [i for i in items if i.needs_raises or i.error]
    return {
        "items": len(items),
        "documented": sum(1 for i in items if i.doc),
        "should_say_raises": len(needs),
        "say_raises": sum(1 for i in needs if i.doc and RAISES.search(i.doc)),
    }


def test_every_public_name_and_client_member_has_its_own_docstring():
    missing = [i.name for i in public_api() if not i.doc]
    assert not missing, f"no docstring: {missing}"


def test_every_public_callable_says_what_it_raises_and_every_error_when_it_is_raised():
    silent = [i.name for i in public_api() if (i.needs_raises or i.error) and not (i.doc and RAISES.search(i.doc))]
    assert not silent, f"does not say what it raises (or 'Raises nothing'): {silent}"


def test_the_errors_a_docstring_names_exist():
    known = {n for n in dir(qwenvl) if n.endswith("Error")} | {n for n in dir(builtins) if n.endswith("Error")}
    known |= {"ValidationError", "KeyboardInterrupt", "UnidentifiedImageError"}  # pydantic, Ctrl-C, Pillow
    wrong = {f"{i.name}: {e}" for i in public_api() if i.doc for e in NAMED_ERROR.findall(i.doc) if e not in known}
    assert not wrong, f"docstrings name errors that do not exist: {sorted(wrong)}"


def test_the_client_members_measured_include_what_users_call():
    names = {i.name for i in public_api()}
    for cls in ("Client", "AsyncClient"):
        for member in ("complete", "send", "stream", "send_stream", "ask", "plan", "request", "preview", "backend"):
            assert f"{cls}.{member}" in names
    assert {"Client.close", "AsyncClient.aclose", "Request", "Response", "Call", "TextPart", "ImagePart"} <= names


@pytest.mark.parametrize("model", [qwenvl.Request, qwenvl.Response, qwenvl.Usage])
def test_every_field_has_a_description_in_the_json_schema(model: type[pydantic.BaseModel]):
    schema = model.model_json_schema(mode="serialization" if model is not qwenvl.Request else "validation")
    props = schema["properties"]
    undescribed = [name for name, prop in props.items() if not prop.get("description")]
    assert not undescribed, f"{model.__name__} fields without a description: {undescribed}"
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no Field(description=...)"


def test_call_and_the_part_types_are_exported():
    from qwenvl.plan import Call
    from qwenvl.types import ImagePart, Part, TextPart, VideoPart

    assert (qwenvl.Call, qwenvl.TextPart, qwenvl.ImagePart, qwenvl.VideoPart) == (Call, TextPart, ImagePart, VideoPart)
    assert qwenvl.Part == Part
    assert set(Part.__args__) <= {getattr(qwenvl, n) for n in qwenvl.__all__ if n != "__version__"}
    message = qwenvl.Message(role="user", content=[qwenvl.TextPart(text="hi"), qwenvl.ImagePart(image="a.png")])
    assert message.text() == "hi" and [p.image for p in message.media() if isinstance(p, qwenvl.ImagePart)] == ["a.png"]


def test_both_clients_meet_the_protocols_they_are_passed_as():
    client, aclient = qwenvl.Client(api_key="sk-test"), qwenvl.AsyncClient(api_key="sk-test")
    for proto in (interfaces.SupportsComplete, interfaces.SupportsStream, interfaces.SupportsPreview):
        assert isinstance(client, proto), proto
    for proto in (interfaces.SupportsAsyncComplete, interfaces.SupportsPlan, interfaces.SupportsPreview):
        assert isinstance(aclient, proto), proto
    for proto in (interfaces.ClientEndpoint, interfaces.SupportsEstimate):
        assert isinstance(client, proto) and isinstance(aclient, proto), proto
    assert not isinstance(object(), interfaces.SupportsPlan)
    client.close()


class Recording:
    """A test double that subclasses nothing: it forwards to a real Client and records what it sent."""

    def __init__(self, inner: qwenvl.Client) -> None:
        self.inner = inner
        self.sent: list[qwenvl.Call] = []

    def plan(self, request: Any = None, *, estimate_only: bool = False, **fields: Any) -> qwenvl.Call:
        return self.inner.plan(request, estimate_only=estimate_only, **fields)

    def resolve_model(self, name: str | None = None) -> qwenvl.ModelInfo:
        return self.inner.resolve_model(name)

    def send(self, call: qwenvl.Call) -> qwenvl.Response:
        self.sent.append(call)
        return self.inner.send(call)


def test_a_double_that_subclasses_nothing_runs_a_task(server, protocol, isolated_env):
    from qwenvl import tasks

    image = write_image(isolated_env / "a.png", (640, 480))
    server.enqueue(Reply(text='[{"bbox_2d": [100, 200, 500, 800], "label": "cat"}]'))
    with make_client(server, protocol) as inner:
        double = Recording(inner)
        assert isinstance(double, interfaces.SupportsComplete)
        result = tasks.ground(double, str(image), "the cat")
    assert len(double.sent) == 1 and len(server.requests) == 1, "the double's send went to the server"
    assert [(b.x1, b.y1, b.x2, b.y2) for b in result.boxes] == [(64, 96, 320, 384)]  # 0-1000 grid -> 640x480


TYPED_USE = """
from typing import Any

import qwenvl
from qwenvl import tasks


class Wrapper:  # subclasses nothing: the members tasks.ground uses
    def __init__(self, inner: qwenvl.Client) -> None:
        self.inner = inner

    def plan(self, request: Any = None, *, estimate_only: bool = False, **fields: Any) -> qwenvl.Call:
        return self.inner.plan(request, estimate_only=estimate_only, **fields)

    def resolve_model(self, name: str | None = None) -> qwenvl.ModelInfo:
        return self.inner.resolve_model(name)

    def send(self, call: qwenvl.Call) -> qwenvl.Response:
        return self.inner.send(call)


class PlanOnly:  # no send: fine for plan_ground, not for ground
    def plan(self, request: Any = None, *, estimate_only: bool = False, **fields: Any) -> qwenvl.Call:
        raise NotImplementedError

    def resolve_model(self, name: str | None = None) -> qwenvl.ModelInfo:
        raise NotImplementedError


g: tasks.Grounding = tasks.ground(Wrapper(qwenvl.Client()), "a.png", "cat", image_size=(640, 480))
tasks.ground(qwenvl.Client(), "a.png", "cat")
tasks.plan_ground(qwenvl.AsyncClient(), "a.png", "cat")
tasks.plan_ground(PlanOnly(), "a.png", "cat")
tasks.ground(PlanOnly(), "a.png", "cat")  # line 34: the one error expected
"""


def test_a_type_checker_sees_the_types_and_the_protocols(tmp_path):
    """qwenvl ships ``py.typed`` (PEP 561), so a user's mypy checks calls against its types: a wrapper that
    subclasses nothing satisfies ``SupportsComplete``, and an object without ``send`` is refused, by name."""
    pytest.importorskip("mypy")
    import subprocess
    import sys

    (tmp_path / "use.py").write_text(TYPED_USE)
    cmd = [sys.executable, "-m", "mypy", "--config-file=", "--python-version=3.11", "--follow-imports=silent"]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "use.py"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    errors = [line for line in p.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("use.py:34:"), p.stdout + p.stderr
    assert '"PlanOnly"' in errors[0] and "SupportsComplete" in errors[0] and "send" in p.stdout


if __name__ == "__main__":
    items = public_api()
    print(coverage(items))
    for item in items:
        flag = "" if item.doc else "NO DOC "
        if (item.needs_raises or item.error) and not (item.doc and RAISES.search(item.doc)):
            flag += "NO RAISES"
        if flag:
            print(f"  {item.name}: {flag}")
