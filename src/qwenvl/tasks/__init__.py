"""Vision tasks as typed calls: grounding, OCR, extraction and video events.

    from qwenvl import Client, tasks
    client = Client()
    g = tasks.ground(client, "photo.jpg", "every person and dog")     # Grounding: .boxes .points .warnings
    tasks.annotate("photo.jpg", g, "boxes.png")                       # the boxes drawn on the image
    r = tasks.ocr(client, "scan.pdf", format="markdown")              # OCRResult: .text .pages
    e = tasks.estimate_ocr(client, "scan.pdf")                        # one request per page, priced: .cost_max
    r = tasks.extract(client, "invoice.png", Invoice)                 # Response: .json .parsed
    t = tasks.events(client, "clip.mp4")                              # Timeline: .events [{start, end, event}]

With an ``AsyncClient``, await the ``a``-prefixed variants (``await tasks.aground(aclient, "photo.jpg", "cats")``,
``aocr``, ``aextract``, ``aextract_many``, ``aevents``): the same requests and the same reading, the media prepared
in a worker thread. The plain functions refuse an AsyncClient (TypeError naming the variant), and the variants
a Client.

Files are paths (``str`` or ``os.PathLike``) or URLs; images may also be bytes or PIL images.

Each task is also two steps, ``plan_*`` (the request, nothing sent; for dry runs) and ``read_*`` (the answer
interpreted), so the answer of any request can be read the same way.
"""

from qwenvl.tasks.draw import annotate, contact_sheet
from qwenvl.tasks.events import Event, Timeline, aevents, events, plan_events, read_timeline
from qwenvl.tasks.extract import Extraction, aextract, aextract_many, extract, extract_many, plan_extract
from qwenvl.tasks.grounding import Box, Grounding, Point, aground, ground, plan_ground, read_grounding
from qwenvl.tasks.ocr import OCRLine, OCRPage, OCRResult, aocr, estimate_ocr, ocr, plan_ocr
from qwenvl.tasks.parsing import ParsedAnswer, RawItem, parse_answer

__all__ = [
    "Box",
    "Event",
    "Extraction",
    "Grounding",
    "OCRLine",
    "OCRPage",
    "OCRResult",
    "ParsedAnswer",
    "Point",
    "RawItem",
    "Timeline",
    "aevents",
    "aextract",
    "aextract_many",
    "aground",
    "annotate",
    "aocr",
    "contact_sheet",
    "estimate_ocr",
    "events",
    "extract",
    "extract_many",
    "ground",
    "ocr",
    "parse_answer",
    "plan_events",
    "plan_extract",
    "plan_ground",
    "plan_ocr",
    "read_grounding",
    "read_timeline",
]
