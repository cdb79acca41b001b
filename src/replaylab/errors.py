"""Error types. A `ReplaylabError` is a user mistake: the CLI prints its message on one line and
exits with status 2, without a traceback (unless `--debug`)."""


class ReplaylabError(Exception):
    """A mistake the user can fix. The message says what was wrong, the value, and the fix."""


class ConfigError(ReplaylabError):
    """A configuration field has a bad value."""


class DataError(ReplaylabError):
    """A corpus, tokenizer or token store cannot be built or read."""


def one_line(error: BaseException) -> str:
    """An exception as one line, `Type: first line of its message`, for a fallback's warning or a record."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
