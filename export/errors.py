"""Why an export stopped: the message says what is wrong and how to fix it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bertforge.errors import UserError

if TYPE_CHECKING:
    from export.report import ExportReport


class ExportError(UserError):
    """The export cannot proceed; the message says why and how to fix it."""


class ParityError(ExportError):
    """A variant missed its parity gate; nothing of it was written."""

    def __init__(self, failures: list[str], report: ExportReport):
        super().__init__("parity gate failed, nothing written:\n  " + "\n  ".join(failures))
        self.failures = failures
        self.report = report
