"""Errors recog raises for bad input. The CLI prints their message, without a traceback."""


class RecogError(Exception):
    """Base class: a problem with the user's input, data or files."""


class ConfigError(RecogError, ValueError):
    """An unknown config key or a value out of range."""


class DataError(RecogError):
    """A dataset that cannot be found, read or used."""


class WeightsError(RecogError):
    """A weights file that cannot be loaded safely or does not fit the model."""


class TrainingError(RecogError):
    """Training cannot go on (for example, the loss became NaN or infinite)."""
