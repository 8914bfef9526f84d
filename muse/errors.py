"""Errors raised by the dataset readers, and the skip report used in lenient mode."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field


class DatasetFormatError(ValueError):
    """A record of a dataset file breaks the format.

    Attributes:
        file: path of the offending file, as given to the reader.
        index: index of the record in that file, or ``None`` for file-level problems.
        reason: short machine-readable key, e.g. ``"placeholder_count"``, ``"missing_image"``,
            ``"bad_polygon"``, ``"unknown_instance"``, ``"bbox_out_of_bounds"``, ``"bad_rle"``,
            ``"bad_category"``, ``"missing_field"``.
        detail: the human explanation (the message without the location prefix).
    """

    def __init__(self, file: str, index: int | None, reason: str, detail: str) -> None:
        self.file = str(file)
        self.index = index
        self.reason = reason
        self.detail = detail
        where = self.file if index is None else f"{self.file}[record {index}]"
        super().__init__(f"{where}: {detail} ({reason})")

    def __reduce__(self):  # keep the error picklable for DataLoader workers
        return (type(self), (self.file, self.index, self.reason, self.detail))


@dataclass
class SkipReport:
    """What a lenient reader dropped, counted by reason, so nothing is dropped silently.

    Attributes:
        file: the file the reader was reading.
        skipped: reason -> number of skipped units (records or questions).
        examples: reason -> message of the first error of that reason.
        records: number of whole records skipped.
        questions: number of single questions skipped (their record was kept).
    """

    file: str
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    records: int = 0
    questions: int = 0

    def add(self, error: DatasetFormatError, *, unit: str = "record") -> None:
        """Count one skipped record (``unit="record"``) or question (``unit="question"``)."""
        self.skipped[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))
        if unit == "record":
            self.records += 1
        else:
            self.questions += 1

    def __bool__(self) -> bool:
        return bool(self.skipped)

    def report(self) -> str:
        """One line per reason with its count and first example; "nothing skipped" if clean."""
        if not self.skipped:
            return f"{self.file}: nothing skipped"
        head = (
            f"{self.file}: skipped {self.records} record(s) and {self.questions} question(s)"
        )
        lines = [head]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  {reason}: {count} (e.g. {self.examples[reason]})")
        return "\n".join(lines)

    def warn(self) -> None:
        """Emit the report as a ``UserWarning`` when anything was skipped."""
        if self.skipped:
            warnings.warn(self.report(), UserWarning, stacklevel=3)


class LenientReader:
    """Mixin for readers that keep a :class:`SkipReport` in ``self._skips``."""

    _skips: SkipReport

    @property
    def skipped(self) -> Counter:
        """``collections.Counter`` reason -> number of skipped records/questions."""
        return self._skips.skipped

    def report(self) -> str:
        """Human-readable account of what lenient loading skipped."""
        return self._skips.report()
