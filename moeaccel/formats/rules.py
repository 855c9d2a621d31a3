"""Legality rules written once for the hardware and for Python.

A unit's rules are a function ``rules(config, command)`` returning ``(reason, refused)`` pairs:
``refused`` is built from the command's fields with ``==``, ``<``, ``>``, ``*``, ``+``, ``&`` and
``|`` only, so the same expression is a Python bool when `command` is a decoded command (a `Fields`)
and an Amaranth value when it is the view of a command stream's payload; ``reason`` is a function
giving the message, called only in Python. `check` lists the reasons of a decoded command;
`refused_by` is the RTL's ``illegal`` signal. (No ``~``, ``-`` or ``Mux`` in a rule: ``~1`` is -2 in
Python, and an unsigned difference wraps in hardware.)
"""

from __future__ import annotations

import functools
import operator
from types import SimpleNamespace

__all__ = ["Fields", "check_rules", "refused_by"]


class Fields(SimpleNamespace):
    """A decoded command's fields as attributes (nested groups as nested `Fields`)."""

    @classmethod
    def of(cls, fields: dict) -> "Fields":
        return cls(**{name: cls.of(value) if isinstance(value, dict) else value
                      for name, value in fields.items()})


def check_rules(rules) -> list[str]:
    """The reasons of the rules a decoded command breaks (empty: it is legal)."""
    return [reason() for reason, refused in rules if refused]


def refused_by(rules):
    """One Amaranth value, high when any rule refuses the command."""
    return functools.reduce(operator.or_, (refused for _, refused in rules))
