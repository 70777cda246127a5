"""What an export reports while it runs: steps (transient work) and outcomes (verdicts worth keeping).

The exporter and the int8 search call these two methods only; what to show is the caller's choice
(the CLI keeps outcomes on screen and shows steps on a status line; bench shows nothing).
"""

from __future__ import annotations


class ExportProgress:
    """Receives an export's events; this base shows nothing."""

    def step(self, message: str) -> None:
        """Work that has started (building a variant, trying a recipe)."""

    def outcome(self, message: str) -> None:
        """A result the user should still see afterwards (a gate verdict, a choice, a note, what was written)."""


class PrintProgress(ExportProgress):
    """Every event as a line on stdout (library use, `bertforge pipeline`)."""

    def step(self, message: str) -> None:
        print(f"[export] {message}", flush=True)

    def outcome(self, message: str) -> None:
        print(f"[export] {message}", flush=True)
