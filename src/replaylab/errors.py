"""Error types. A `ReplaylabError` is a user mistake: the CLI prints its message on one line and
exits with status 2, without a traceback (unless `--debug`)."""


class ReplaylabError(Exception):
    """A mistake the user can fix. The message says what was wrong, the value, and the fix."""


class ConfigError(ReplaylabError):
    """A configuration field has a bad value."""


class DataError(ReplaylabError):
    """A corpus, tokenizer or token store cannot be built or read."""
