"""The one base for errors whose message is the whole story for whoever runs llmq."""

from __future__ import annotations


class UserError(RuntimeError):
    """A problem the user fixes (a setting, a service to start, a refused request), not a bug:
    the CLI prints its message as one line on stderr and exits 1, without a traceback."""
