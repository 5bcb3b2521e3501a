"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class CompassError(Exception):
    """A user-facing error: bad input, bad config, a failed precondition. The message names the bad value."""
