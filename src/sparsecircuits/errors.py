"""The one exception type users see as a one-line message from the CLI."""


class SparseCircuitsError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
