"""``qwenvl serve``: the DashScope API (both protocols) in front of any backend. Needs ``qwenvl[serve]``."""
