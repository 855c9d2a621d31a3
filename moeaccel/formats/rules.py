"""Legality rules written once for the hardware and for Python.

A unit's rules are a function ``rules(config, command)`` returning ``(reason, refused)`` pairs:
``refused`` is built from the command's fields with ``==``, ``<``, ``>``, ``*``, ``+``, ``&`` and
``|`` only, so the same expression is a Python bool when `command` is a decoded command (a `Fields`)
and an Amaranth value when it is the view of a command stream's payload; ``reason`` is a function
giving the message, called only in Python. `check_rules` lists the reasons of a decoded command
(its enum fields made members first, `normalise`); `refused_by` is the RTL's ``illegal`` signal.
No ``~``, ``-``, ``not``, ``and``/``or``, ``in`` or ``Mux`` in a rule: ``~1`` is -2 in Python, an
unsigned difference wraps in hardware, and an Amaranth value has no truth value; `mod` stands for
``%`` (Python refuses a modulus of 0, the hardware gives 0).
"""

from __future__ import annotations

import functools
import operator
from types import SimpleNamespace

from amaranth.lib import data, enum

__all__ = ["Fields", "normalise", "check_rules", "refused_by", "mod", "member"]


class Fields(SimpleNamespace):
    """A decoded command's fields as attributes (nested groups as nested `Fields`)."""

    @classmethod
    def of(cls, fields: dict) -> "Fields":
        return cls(**{name: cls.of(value) if isinstance(value, dict) else value
                      for name, value in fields.items()})


def normalise(layout: data.StructLayout, fields: dict) -> tuple[dict, list[str]]:
    """`fields` with every enum field of `layout` a member of its enum (a decoded command holds
    members, a hand-written one may hold integers); the reasons for values no member has."""
    out, reasons = dict(fields), []
    for name, field in layout:
        if name not in out:
            continue
        shape = field.shape
        if isinstance(shape, data.StructLayout) and isinstance(out[name], dict):
            out[name], inner = normalise(shape, out[name])
            reasons += inner
        elif isinstance(shape, type) and issubclass(shape, enum.Enum) \
                and not isinstance(out[name], shape):
            try:
                out[name] = shape(out[name])
            except ValueError:
                reasons.append(f"{name}={out[name]!r} is no {shape.__name__}")
    return out, reasons


def mod(a, b):
    """``a % b`` in a rule: 0 when ``b`` is 0, as the hardware's remainder gives."""
    if isinstance(a, int) and isinstance(b, int):
        return a % b if b else 0
    return a % b


def member(value, enum_type):
    """Whether `value` is one of `enum_type`'s members: always, for a decoded command (`check`
    made it one, `normalise`); for a view of a command's bits, whether its code is one."""
    if isinstance(value, enum_type):
        return True
    return functools.reduce(operator.or_, (value == m for m in enum_type))


def check_rules(rules) -> list[str]:
    """The reasons of the rules a decoded command breaks (empty: it is legal)."""
    return [reason() for reason, refused in rules if refused]


def refused_by(rules):
    """One Amaranth value, high when any rule refuses the command."""
    return functools.reduce(operator.or_, (refused for _, refused in rules))
