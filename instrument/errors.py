"""The project's named exceptions. Every message is one line: the value, what is allowed, the fix."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one line for a log or a message: "Type: text", whitespace folded, at most `limit`."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:limit]


class EndlessError(Exception):
    """Base of every error the instrument reports to a user; the CLI prints it as one line."""

    exit_code = 1


class ClipError(EndlessError):
    """A clip or a clip folder cannot be used."""


class ParamError(EndlessError):
    """A parameter address, value or type is not acceptable (OSC, scripts, presets, CLI)."""

    exit_code = 2


class ScriptError(EndlessError):
    """A timed control script cannot be parsed."""

    exit_code = 2


class AudioDeviceError(EndlessError):
    """An audio device cannot be found or opened."""

    exit_code = 3


class ConfigError(EndlessError):
    """A command-line flag or setting is out of range."""

    exit_code = 2
