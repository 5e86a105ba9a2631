"""Cameron's exceptions. Expected failures of a step are values (protocol.step_error);
these are for the unexpected, and for refusing to start with a bad setup."""


class CameronError(Exception):
    """Base of every exception Cameron raises on purpose."""


class ConfigError(CameronError):
    """A setting in a file, variable or flag that Cameron cannot use."""


class CatalogueError(CameronError):
    """A workflow catalogue that cannot be read."""


class StoreUnavailable(CameronError):
    """Redis did not answer: the caller backs off and retries, or answers 503."""


class InvalidAnswer(CameronError):
    """A step service answered something that breaks the step protocol."""
