"""One exception type for problems the user can fix; the CLI prints it without a traceback."""


class ProbebenchError(Exception):
    """Bad input, missing weights or data, or a stale/incomplete cache: the message says what to do."""
