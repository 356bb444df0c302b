"""PACS settings: our AE title and storage port, and the nodes (DIMSE or DICOMweb) with a
"Test" button (C-ECHO or a QIDO request, in a worker).  Saved to ``pacs.json`` (mode 0600);
passwords and tokens are typed into masked fields and never shown back in clear."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QPushButton, QSpinBox, QStackedWidget,
                               QVBoxLayout, QWidget)

from imaging_assist.pacs.nodes import Node, PacsError, load_settings

from ..shared.spinbox import DecimalSpinBox
from ..shared.text import reason_of
from ..shared.theme import ERROR_FG
from .worker import Job


class NodesDialog(QDialog):
    saved = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("PACS settings")
        self.resize(720, 460)
        self._jobs: list[Job] = []
        try:
            self.settings = load_settings()
            load_error = ""
        except PacsError as e:
            from imaging_assist.pacs.nodes import Settings
            self.settings, load_error = Settings(), reason_of(e)

        outer = QVBoxLayout(self)
        ours = QHBoxLayout()
        self.our_ae = QLineEdit(self.settings.ae_title)
        self.our_ae.setMaxLength(16)
        self.our_port = QSpinBox()
        self.our_port.setRange(1, 65535)
        self.our_port.setValue(self.settings.storage_port)
        ours.addWidget(QLabel("Our AE title"))
        ours.addWidget(self.our_ae)
        ours.addWidget(QLabel("Storage port (C-MOVE)"))
        ours.addWidget(self.our_port)
        ours.addStretch(1)
        outer.addLayout(ours)

        body = QHBoxLayout()
        left = QVBoxLayout()
        self.list = QListWidget()
        self.list.currentTextChanged.connect(self._show_node)
        left.addWidget(self.list)
        b = QHBoxLayout()
        self.b_new = QPushButton("New")
        self.b_new.clicked.connect(self._new)
        self.b_remove = QPushButton("Remove")
        self.b_remove.clicked.connect(self._remove)
        b.addWidget(self.b_new)
        b.addWidget(self.b_remove)
        left.addLayout(b)
        body.addLayout(left, 1)

        form_w = QWidget()
        form = QFormLayout(form_w)
        self.name = QLineEdit()
        self.kind = QComboBox()
        self.kind.addItems(["DIMSE", "DICOMweb"])
        form.addRow("Name", self.name)
        form.addRow("Kind", self.kind)
        self.stack = QStackedWidget()
        dimse = QWidget()
        fd = QFormLayout(dimse)
        self.ae = QLineEdit()
        self.ae.setMaxLength(16)
        self.host = QLineEdit()
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(104)
        self.tls_ca, self.tls_cert, self.tls_key = QLineEdit(), QLineEdit(), QLineEdit()
        self.tls_ca.setPlaceholderText("CA file (PEM): enables TLS")
        fd.addRow("AE title", self.ae)
        fd.addRow("Host", self.host)
        fd.addRow("Port", self.port)
        fd.addRow("TLS CA", self.tls_ca)
        fd.addRow("TLS client cert", self.tls_cert)
        fd.addRow("TLS client key", self.tls_key)
        web = QWidget()
        fw = QFormLayout(web)
        self.url = QLineEdit()
        self.url.setPlaceholderText("https://pacs.example/dicom-web")
        self.auth = QComboBox()
        self.auth.addItems(["none", "basic", "bearer"])
        self.user = QLineEdit()
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.Password)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.Password)
        fw.addRow("Base URL", self.url)
        fw.addRow("Authentication", self.auth)
        fw.addRow("User", self.user)
        fw.addRow("Password", self.password)
        fw.addRow("Bearer token", self.token)
        self.stack.addWidget(dimse)
        self.stack.addWidget(web)
        self.kind.currentIndexChanged.connect(self.stack.setCurrentIndex)
        form.addRow(self.stack)
        self.timeout = DecimalSpinBox()  # "2.5" is 2.5 s under every LANG
        self.timeout.setRange(1, 600)
        self.timeout.setValue(30)
        self.timeout.setSuffix(" s")
        form.addRow("Timeout", self.timeout)
        body.addWidget(form_w, 2)
        outer.addLayout(body, 1)

        self.status = QLabel(load_error)
        self.status.setTextFormat(Qt.PlainText)  # error texts quote the server and the file: shown as written
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        outer.addWidget(self.status)
        bottom = QHBoxLayout()
        self.b_test = QPushButton("Test")
        self.b_test.setToolTip("C-ECHO (DIMSE) or a QIDO request (DICOMweb) with the fields as typed")
        self.b_test.clicked.connect(self.test)
        self.b_save = QPushButton("Save node")
        self.b_save.clicked.connect(self.save_node)
        self.b_close = QPushButton("Close")
        self.b_close.clicked.connect(self.accept)
        bottom.addWidget(self.b_test)
        bottom.addStretch(1)
        bottom.addWidget(self.b_save)
        bottom.addWidget(self.b_close)
        outer.addLayout(bottom)
        self._refresh_list()

    # ------------------------------------------------------------------ form <-> node
    def _refresh_list(self, select: str | None = None) -> None:
        self.list.clear()
        self.list.addItems(sorted(self.settings.nodes))
        if select:
            items = self.list.findItems(select, Qt.MatchExactly)
            if items:
                self.list.setCurrentItem(items[0])
        elif self.list.count():
            self.list.setCurrentRow(0)

    def _show_node(self, name: str) -> None:
        n = self.settings.nodes.get(name)
        if n is None:
            return
        self.name.setText(n.name)
        self.kind.setCurrentIndex(0 if n.is_dimse else 1)
        self.ae.setText(n.ae_title)
        self.host.setText(n.host)
        self.port.setValue(n.port or 104)
        self.tls_ca.setText(n.tls_ca)
        self.tls_cert.setText(n.tls_cert)
        self.tls_key.setText(n.tls_key)
        self.url.setText(n.url)
        self.auth.setCurrentText(n.auth)
        self.user.setText(n.username)
        # Secrets stay in the file; the fields show that one is set, never its value.
        self.password.clear()
        self.password.setPlaceholderText("(saved: leave empty to keep)" if n.password else "")
        self.token.clear()
        self.token.setPlaceholderText("(saved: leave empty to keep)" if n.token else "")
        self.timeout.setValue(n.timeout)

    def _new(self) -> None:
        self.list.clearSelection()
        for w in (self.name, self.ae, self.host, self.url, self.user, self.password, self.token,
                  self.tls_ca, self.tls_cert, self.tls_key):
            w.clear()
        self.password.setPlaceholderText("")
        self.token.setPlaceholderText("")
        self.name.setFocus()

    def node_from_form(self) -> Node:
        name = self.name.text().strip()
        old = self.settings.nodes.get(name)
        if self.kind.currentIndex() == 0:
            n = Node(name, "dimse", ae_title=self.ae.text().strip(), host=self.host.text().strip(),
                     port=self.port.value(), tls_ca=self.tls_ca.text().strip(),
                     tls_cert=self.tls_cert.text().strip(), tls_key=self.tls_key.text().strip(),
                     timeout=self.timeout.value())
        else:
            auth = self.auth.currentText()
            pw = self.password.text() or (old.password if old and auth == "basic" else "")
            tok = self.token.text() or (old.token if old and auth == "bearer" else "")
            n = Node(name, "dicomweb", url=self.url.text().strip(), auth=auth,
                     username=self.user.text().strip() if auth == "basic" else "",
                     password=pw if auth == "basic" else "", token=tok if auth == "bearer" else "",
                     timeout=self.timeout.value())
        return n.validate()

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {ERROR_FG};" if error else "")

    # ------------------------------------------------------------------ actions
    def save_node(self) -> bool:
        from imaging_assist.pacs.nodes import add_node, check_ae, check_port, update_settings
        try:
            node = self.node_from_form()
            ae, port = check_ae(self.our_ae.text()), check_port(self.our_port.value())  # before saving anything
            add_node(node)
            # under the settings' lock: a node another window or the CLI saved meanwhile stays
            self.settings = update_settings(ae, port)
        except PacsError as e:
            self._say(reason_of(e), error=True)
            return False
        self._refresh_list(node.name)
        self._say(f"saved {node.label()}")
        self.saved.emit()
        return True

    def _remove(self) -> None:
        from imaging_assist.pacs.nodes import remove_node
        item = self.list.currentItem()
        if item is None:
            return
        try:
            remove_node(item.text())
            self.settings = load_settings()
        except PacsError as e:
            self._say(reason_of(e), error=True)
            return
        self._refresh_list()
        self._say(f"removed {item.text()}")
        self.saved.emit()

    def test(self) -> None:
        from imaging_assist.pacs import api
        from imaging_assist.pacs.nodes import Settings, check_ae
        try:
            node = self.node_from_form()
            settings = Settings(ae_title=check_ae(self.our_ae.text()),
                                storage_port=self.our_port.value())
        except PacsError as e:
            self._say(reason_of(e), error=True)
            return
        self.b_test.setEnabled(False)
        self._say(f"testing {node.label()}…")
        job = Job(lambda j: api.echo(node, settings), self)
        job.done.connect(lambda t: (self.b_test.setEnabled(True), self._say(
            f"{node.label()}: {'C-ECHO' if node.is_dimse else 'QIDO-RS'} ok in {t * 1000:.0f} ms")))
        job.failed.connect(lambda msg: (self.b_test.setEnabled(True), self._say(msg, error=True)))
        self._jobs.append(job)
        job.start()
