"""The patient's other studies (priors) from the loaded index, to open beside the current one."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from imaging_assist import viewing

from ..shared.text import plain_tip

UID_ROLE = Qt.UserRole + 7


def _date(d: str) -> str:
    day = viewing.parse_date(d)
    return day.isoformat() if day is not None else (str(d or "") or "no date")


class PriorsPanel(QWidget):
    """Lists the other studies of the shown series' patient (same PatientID, not another
    issuer's), most recent first; ``openBeside(study_uid)`` on double-click or the button."""

    openBeside = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.title.setTextFormat(Qt.PlainText)  # names a patient's names: never markup
        self.list = QListWidget()
        self.list.itemActivated.connect(self._activated)
        self.list.itemDoubleClicked.connect(self._activated)
        self.button = QPushButton("Open beside the current study")
        self.button.setToolTip("Show the selected prior in a 1×2 layout next to the current series")
        self.button.clicked.connect(lambda: self._activated(self.list.currentItem()))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addWidget(self.title)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.button)
        self.studies = []

    def set_current(self, index, series) -> list:
        """Fill the list for the series shown; returns the patient's other studies.  Each says
        when it is not this study's prior (made later, dated in the future, or the order is
        unknown) and when it names another patient name or birth date under the same ID."""
        self.studies = viewing.other_studies(index, series)
        self.list.clear()
        here = index.study_of(series) if (index is not None and series is not None) else None
        here_note = viewing.date_note(here) if here is not None else ""
        checks = []
        for st in self.studies:
            mods = sorted({s.modality for s in st.series if s.is_image and s.modality})
            n = sum(1 for s in st.series if s.is_image)
            if viewing.in_future(st):
                tag, why = "  (dated in the future: check)", "Dated in the future: not a prior, check the date"
            elif viewing.is_later(st, here):
                tag, why = "  (later)", "Made after the current study: not its prior"
            elif here_note or viewing.date_note(st):
                tag, why = "  (order unknown)", "Which study is older is unknown (a date missing or not a date)"
            else:
                tag, why = "", ""
            who = viewing.patient_note(index, series, st)
            if who:
                checks.append(who)
            it = QListWidgetItem(f"{_date(st.date)}  {st.description or '(no description)'}{tag}\n"
                                 f"{'/'.join(mods) or '?'}  ·  {n} series" + (f"\n⚠ {who}" if who else ""))
            it.setData(UID_ROLE, st.uid)
            it.setToolTip(plain_tip(f"Study {st.description}\nDate {_date(st.date)} {st.time}\n"
                                    f"Accession {st.accession or '-'}\nUID {st.uid}"
                                    + (f"\n{why}" if why else "") + (f"\n{who}" if who else "")))
            self.list.addItem(it)
        if self.studies:
            self.list.setCurrentRow(0)
            when = ""
            if here is not None:
                when = f"current: {here_note}; which is older is unknown" if here_note else f"current: {_date(here.date)}"
            self.title.setText(f"{len(self.studies)} other stud{'y' if len(self.studies) == 1 else 'ies'} "
                               f"of this patient" + (f" ({when})" if when else "")
                               + "".join(f"\n⚠ {c}" for c in dict.fromkeys(checks)))
        else:
            self.title.setText("No other study of this patient is loaded")
        self.button.setEnabled(bool(self.studies))
        return self.studies

    def _activated(self, item):
        if item is not None:
            self.openBeside.emit(item.data(UID_ROLE))
