"""Errors recog raises for bad input. The CLI prints their message, without a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class RecogError(Exception):
    """Base class: a problem with the user's input, data or files."""


class ConfigError(RecogError, ValueError):
    """An unknown config key or a value out of range."""


class DataError(RecogError):
    """A dataset that cannot be found, read or used."""


class WeightsError(RecogError):
    """A weights file that cannot be loaded safely or does not fit the model."""


class OutputError(RecogError):
    """A file recog writes could not be written (full disk, read-only folder); nothing was replaced."""


class TrainingError(RecogError):
    """Training cannot go on (for example, the loss became NaN or infinite)."""


class MissingExtra(ConfigError):
    """A feature's optional libraries are not installed (serve answers 501 for it, not 400)."""

    def __init__(self, what: str, extra: str, alternative: str = "") -> None:
        super().__init__(f"{what}: pip install 'recog[{extra}]' (from a clone: pip install -e \".[{extra}]\")"
                         f"{alternative}")
        self.extra = extra


def shown(path: object) -> str:
    """A file name as messages show it: control characters (a newline in a name could forge a log
    line) escaped, the rest as it is."""
    text = str(path)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def did_you_mean(word: str, choices: Iterable[str], template: str = "; did you mean {!r}?", cutoff: float = 0.6) -> str:
    """The hint for a mistyped name: ``template`` filled with the closest of ``choices``, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return template.format(close[0]) if close else ""
