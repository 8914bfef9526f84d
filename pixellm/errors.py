"""Typed errors raised by the public API."""


class InputError(ValueError):
    """A user input (image, question, batch) cannot be used; the message says which and why."""


class CheckpointError(RuntimeError):
    """A checkpoint directory or weights file is missing, incomplete or does not match the model."""


class ConfigError(ValueError):
    """A model config is unknown or malformed."""


class TrainingDivergedError(RuntimeError):
    """A training loss became NaN/inf; the run stops (naming the step) instead of going on."""
