"""Why an assertion was refused.

Every refusal is an ``AssertionRejected`` with a stable ``code`` (for clients and logs) and a
human ``message``. Neither ever contains the token: a 401 body or a log line must not be a way
to lift someone's assertion.
"""

from __future__ import annotations


class AssertionRejected(Exception):
    code = "invalid_assertion"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class AssertionMissing(AssertionRejected):
    code = "missing_assertion"

    def __init__(self, message: str = "authgate assertion missing") -> None:
        super().__init__(message)


class AssertionExpired(AssertionRejected):
    code = "assertion_expired"

    def __init__(self, message: str = "authgate assertion expired") -> None:
        super().__init__(message)


class KeysUnavailable(AssertionRejected):
    """No verifying key could be obtained at all: refuse rather than guess (fail closed)."""

    code = "keys_unavailable"


class UserRejected(AssertionRejected):
    """A valid assertion whose subject is not (or no longer) an acceptable user here."""
