"""What `--precision` asks for, parsed once: `auto`, one variant, or (--output mode) a comma list or `all`.

    Precision.parse("auto").is_auto                 # True: the int8 search, else fused fp32 (export.choice)
    Precision.parse("fp32,int8").names              # ("fp32", "int8")
    Precision.parse("int4")                         # ConfigError naming the valid spellings

The config keeps the text as written (`precision = "all"` in export_config.toml); everything that acts on it
reads the parsed value, `ExportConfig.requested_precision`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertforge.errors import ConfigError

PRECISIONS = ("fp32", "int8", "int8-static", "fp16")  # what "all" means in --output mode
AUTO = "auto"  # the fastest variant that passes: the int8 recipe search, else fused fp32
ALL = "all"
DEFAULT_PRECISION = AUTO


@dataclass(frozen=True)
class Precision:
    """The precisions one export builds, in the order asked; `text` is the request as written."""

    names: tuple[str, ...]
    text: str

    @classmethod
    def parse(cls, text: str | Precision) -> Precision:
        """`auto`, `fp32`, `int8`, `int8-static`, `fp16`, a comma list of those, or `all` (every variant)."""
        if isinstance(text, Precision):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"precision must be a string such as {AUTO!r} or 'fp32,int8', got {text!r}")
        text = text.strip()
        names = PRECISIONS if text == ALL else tuple(part.strip() for part in text.split(",") if part.strip())
        if not names:
            raise ConfigError(f"precision is empty; give {AUTO!r}, one of {list(PRECISIONS)}, a comma list of them "
                              f"or {ALL!r} (the last two with --output)")
        for name in names:
            if name not in (AUTO, *PRECISIONS):
                raise ConfigError(f"precision {name!r} is not one of {[AUTO, *PRECISIONS]} (or 'all' with --output)")
        return cls(names=names, text=text)

    @property
    def is_auto(self) -> bool:
        return self.names == (AUTO,)

    @property
    def single(self) -> str | None:
        """The one precision asked for, or None for several (a Triton repository serves exactly one)."""
        return self.names[0] if len(self.names) == 1 else None

    def __str__(self) -> str:
        return self.text
