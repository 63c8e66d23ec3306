"""Credentials masked in the records (docs/privacy.md): payload excerpts and the application
metadata's URIs, before a record is built. ``names`` lists what is masked, ``rules`` finds and
masks it, ``screen`` keeps the cost of excerpts without credentials near zero, ``redactor``
applies them to the flows that end."""

from __future__ import annotations

from .redactor import Redactor

__all__ = ["Redactor"]
