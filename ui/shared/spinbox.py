"""Decimal number boxes that read "2.5" and "2,5" alike, whatever the system's language.

Qt takes its number format from LANG: under de_DE, fr_FR or tr_TR the decimal point is "," and
"." a group separator, so "2.5" typed into the slab box became a 25 mm slab and "0.75" in the
heat-map threshold became 0; under ar_EG the boxes showed Arabic-Indic digits.  Every other
number the program shows (the views' corner text, reports, the CLI) uses ".", so the boxes do
too: the C locale (Western digits, ".", no group separators, set as the default in
``app.make_app`` and on each box here), and a "," typed from habit is read as the decimal point,
never as a thousands separator.  Every decimal box in ``ui/`` is a :class:`DecimalSpinBox`.
"""

from __future__ import annotations

from PySide6.QtCore import QLocale
from PySide6.QtWidgets import QDoubleSpinBox


def number_locale() -> QLocale:
    """The locale numbers are shown and read in: C (Western digits, "." as the decimal point),
    no group separator shown, and none accepted ("2,500" is not 2500)."""
    loc = QLocale(QLocale.Language.C)
    loc.setNumberOptions(QLocale.NumberOption.OmitGroupSeparator | QLocale.NumberOption.RejectGroupSeparator)
    return loc


class DecimalSpinBox(QDoubleSpinBox):
    """A QDoubleSpinBox in :func:`number_locale` that takes "," as the decimal point too (the
    "," becomes "." as it is typed).  Its prefix and suffix must hold no "," (" mm", " s")."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLocale(number_locale())  # not the system's: the same boxes under every LANG

    def validate(self, text, pos):
        return super().validate(text.replace(",", "."), pos)

    def valueFromText(self, text):
        return super().valueFromText(text.replace(",", "."))

    def fixup(self, text):
        return super().fixup(text.replace(",", "."))
