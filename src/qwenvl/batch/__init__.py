"""Batches at scale: the runner, the adaptive limiter, the resume journal and the DashScope Batch API. The
response cache and the usage log are ``qwenvl.store``'s (``ResponseCache`` is still named here).

    from qwenvl.batch import Batch, BatchItem
    items = [BatchItem(id=p.name, request={"prompt": "Caption this", "image": str(p)}) for p in photos]
    summary = Batch(items, "captions.jsonl", concurrency=16).run()

The submodules load lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers (``__getattr__`` below is hidden from them)
    from qwenvl.batch.batchapi import BatchAPI
    from qwenvl.batch.inputs import BatchItem, expand_inputs, iter_inputs, read_requests
    from qwenvl.batch.limiter import AdaptiveLimiter
    from qwenvl.batch.runner import Batch, Estimate, Summary
    from qwenvl.store.cache import ResponseCache

_LAZY = {
    "Batch": "qwenvl.batch.runner",
    "BatchItem": "qwenvl.batch.inputs",
    "Estimate": "qwenvl.batch.runner",
    "Summary": "qwenvl.batch.runner",
    "AdaptiveLimiter": "qwenvl.batch.limiter",
    "ResponseCache": "qwenvl.store.cache",
    "BatchAPI": "qwenvl.batch.batchapi",
    "expand_inputs": "qwenvl.batch.inputs",
    "iter_inputs": "qwenvl.batch.inputs",
    "read_requests": "qwenvl.batch.inputs",
}

__all__ = [  # _LAZY's names (tests/test_library_api_faults.py keeps them the same)
    "AdaptiveLimiter",
    "Batch",
    "BatchAPI",
    "BatchItem",
    "Estimate",
    "ResponseCache",
    "Summary",
    "expand_inputs",
    "iter_inputs",
    "read_requests",
]


if not TYPE_CHECKING:  # a type checker sees the names above, and an unknown one (``qwenvl.batch.Bacth``) as an error

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            return getattr(importlib.import_module(_LAZY[name]), name)
        raise AttributeError(f"module 'qwenvl.batch' has no attribute {name!r}")
