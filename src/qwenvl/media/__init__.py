"""Media sources -> checks -> preparation (resize, encode, frames, pages)."""

from qwenvl.media.prepare import MediaOptions, PreparedItem, PreparedMessages, prepare_messages

__all__ = ["MediaOptions", "PreparedItem", "PreparedMessages", "prepare_messages"]
