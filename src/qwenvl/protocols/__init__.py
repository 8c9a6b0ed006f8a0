"""Wire protocols: a Call in, a body dict out; a body or SSE event in, a Response or deltas out. No I/O."""

from types import ModuleType

from qwenvl.protocols import compat, native, openai

PROTOCOL_MODULES: dict[str, ModuleType] = {"compat": compat, "native": native, "openai": openai}


def get(name: str) -> ModuleType:
    return PROTOCOL_MODULES[name]
