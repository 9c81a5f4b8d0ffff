"""User-facing errors: each names the file, the field and the fix, so the CLI can print one
paragraph and exit 2 instead of a traceback."""

from __future__ import annotations


class SimkvError(Exception):
    """A problem with the user's input (scenario, catalog, override) that the user can fix."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        """One line: `<file>: <field>: <problem>; fix: <what to do>` (the CLI prefixes `simkv: error: `)."""
        where = ": ".join(p for p in (self.file, self.field) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f"; fix: {self.fix}"
        return text

    def located(self, file: str) -> "SimkvError":
        """The same error with the file filled in (if it was not already)."""
        return SimkvError(self.message, file=self.file or file, field=self.field, fix=self.fix)


class ScenarioDoesNotFit(SimkvError):
    """The scenario cannot run at all: weights larger than the GPU, KV cache too small, ..."""
