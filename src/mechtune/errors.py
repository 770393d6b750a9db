"""mechtune's error contract: one base class, a few kinds, each a built-in error too.

Every error mechtune raises on purpose derives from :class:`MechtuneError`, so a caller can
catch mechtune's own failures apart from bugs. Each kind also derives the built-in error it
is an instance of (``ValueError`` for bad settings and bad input, ``TypeError`` for an
unsupported model class, ``ImportError`` for a missing optional extra), so code that
catches the built-in keeps working. The command line turns any ``MechtuneError`` into one
message and exit code 2 (:mod:`mechtune.cli.main`); library code never exits.

Messages name what is wrong and where: the config field(s) and value, or the file, row
and value, and the fix when there is one.
"""

from __future__ import annotations


class MechtuneError(Exception):
    """Base class of every error mechtune raises on purpose."""


class ConfigError(MechtuneError, ValueError):
    """A setting, or a combination of settings, is invalid. Names the field(s) and value."""


class DataError(MechtuneError, ValueError):
    """Input data is malformed: a file, a record, an array. Names where and the value."""


class UnsupportedModelError(MechtuneError, TypeError):
    """A model's class is not in a site table, or it lacks a part mechtune needs."""


class MissingExtraError(MechtuneError, ImportError):
    """An optional dependency is missing. Names the extra that provides it."""


class GateFailed(MechtuneError, RuntimeError):
    """A quality gate failed (e.g. the independent polarity check)."""


__all__ = [
    "ConfigError",
    "DataError",
    "GateFailed",
    "MechtuneError",
    "MissingExtraError",
    "UnsupportedModelError",
]
