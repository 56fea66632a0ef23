"""Instrument panel: pick a resource (discovered VISA or simulated), connect, see who
answered and whether its output is on; on a two-channel instrument, choose the channel(s)
a run drives."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from labctl.gui.tasks import TaskRunner, describe_error
from labctl.gui.units import fmt_si
from PyQt5.QtCore import pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

import labctl
from labctl import catalog


def sim_models() -> dict[str, str]:
    """Instrument models that have both a driver and an in-process emulator."""
    return {
        name: f"simulated {name} (in-process emulator)"
        for name, instrument in catalog.instruments().items()
        if instrument.emulator is not None
    }


def list_instruments(visa_library: str | None = None) -> list[tuple[str, str]]:
    """(resource, description) of what this computer can reach: running emulators, serial
    ports, VISA resources (through ``visa_library``; None: the default). May take seconds:
    call it off the GUI thread."""
    return [
        (r["resource"], f"{r['kind']}: {r.get('description', '')}")
        for r in catalog.resources(visa_library)
    ]


def scan_instruments(
    visa_library: str | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """:func:`list_instruments` and why a kind of resource could not be listed (USB without
    pyusb, GPIB without its library), as ``labctl resources`` says it."""
    return list_instruments(visa_library), catalog.resource_notes(visa_library)


def sim_channels(resource: str) -> int:
    """How many devices the simulated instrument of a ``sim://`` resource drives (0: not a
    simulated instrument we know)."""
    model = catalog.model_key(urlsplit(resource.strip()).netloc)
    return catalog.emulators().get(model, 0)


def channel_label(name: str) -> str:
    """How a technician calls a channel: 'A (smua)' on a 2600, 'channel 1' on a B2900."""
    if name.lower().startswith("smu") and len(name) == 4:
        return f"{name[3].upper()} ({name})"
    return f"channel {name}"


def connect_instrument(resource: str, visa_library: str | None = None):
    """Connect (a VISA resource through ``visa_library``: ``@py``, ``@ivi`` for NI-VISA, or a
    library path; None: the default), identify and put the instrument in its safe state
    (0 V, output off)."""
    driver = labctl.connect(resource, visa_library=visa_library)
    try:
        driver.safe_state()
    except Exception:
        driver.close()
        raise
    return driver


def disconnect_instrument(driver) -> None:
    try:
        driver.safe_state()
    finally:
        driver.close()


def with_query(resource: str, **changes: str | None) -> str:
    """``resource`` with its query keys set (None: removed), other keys kept in order."""
    parts = urlsplit(resource)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    text = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return f"{text}?{urlencode(query, safe='/:')}" if query else text


SAME_DEVICE = "(same as channel 1)"


class InstrumentPanel(QWidget):
    """Emits ``connected(driver)``, ``disconnected()`` and ``output_changed(state)``."""

    connected = pyqtSignal(object)
    disconnected = pyqtSignal()
    output_changed = pyqtSignal(str)  # "off", "on", "unknown"
    channels_changed = pyqtSignal(list)  # labels of the channels a run drives ([]: one)
    message = pyqtSignal(str, str)  # level, text

    def __init__(self, instrument_tasks: TaskRunner, scan_tasks: TaskRunner, parent=None) -> None:
        super().__init__(parent)
        self.tasks = instrument_tasks
        self.scan_tasks = scan_tasks
        self.driver = None
        self.resource_in_use: str | None = None
        self.output_state = "unknown"
        self.lost_reason = ""  # set when the connection failed in use: the output is unknown
        self._busy = False

        self.resource = QComboBox()
        self.resource.setEditable(True)
        self.resource.setObjectName("resource")
        self.resource.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.resource.setMinimumContentsLength(16)
        self.resource.setToolTip(
            "sim://MODEL?device=PRESET&seed=N for a simulated instrument, or a VISA resource "
            "such as TCPIP::192.168.0.10::5025::SOCKET"
        )
        self.scan_btn = QPushButton("Scan")
        self.scan_btn.setToolTip(
            "List the instruments this computer can reach: USB and GPIB (VISA), serial "
            "ports, and emulators started with 'labctl sim serve'"
        )
        self.scan_btn.clicked.connect(self.scan)
        self.scan_status = QLabel("")
        self.scan_status.setWordWrap(True)  # a note on what to install can be long
        self.scan_status.setStyleSheet("color: #666;")

        self.preset = QComboBox()
        self.preset.setObjectName("preset")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.real_time = QCheckBox("real time")
        self.real_time.setObjectName("real_time")
        self.real_time.setChecked(True)
        self.real_time.setToolTip(
            "Ticked: a run takes as long as it would on the bench, so you can watch it. "
            "Unticked: the simulator runs on a virtual clock and a run finishes at once."
        )
        self.preset2 = QComboBox()
        self.preset2.setObjectName("preset2")
        self.preset2.setToolTip("The device on the second channel of a two-channel instrument")
        self.preset2.addItem(SAME_DEVICE)
        presets = catalog.sim_presets()
        for name, desc in presets.items():
            for combo in (self.preset, self.preset2):
                combo.addItem(name)
                combo.setItemData(combo.count() - 1, desc, 3)  # Qt.ToolTipRole
        if "slit_unipolar" in presets:
            self.preset.setCurrentText("slit_unipolar")
        self.sim_box = QGroupBox("Simulated instrument")
        sim_form = QFormLayout(self.sim_box)
        sim_form.addRow("device preset", self.preset)
        self.preset2_label = QLabel("device on channel 2")
        sim_form.addRow(self.preset2_label, self.preset2)
        sim_form.addRow("seed", self.seed)
        sim_form.addRow(self.real_time)
        self.preset_desc = QLabel("")
        self.preset_desc.setWordWrap(True)
        self.preset_desc.setStyleSheet("color: #666; font-size: 8pt;")
        sim_form.addRow(self.preset_desc)

        self.connect_btn = QPushButton("Connect")
        self.connect_btn.setObjectName("connect")
        self.connect_btn.clicked.connect(self.toggle_connection)
        self.identity = QLabel("not connected")
        self.identity.setObjectName("identity")
        self.identity.setWordWrap(True)
        self.caps = QLabel("")
        self.caps.setWordWrap(True)
        self.caps.setStyleSheet("color: #444;")
        # two-channel instruments: which channel(s) a run drives
        self.channel_pick = QComboBox()
        self.channel_pick.setObjectName("channels")
        self.channel_pick.setToolTip(
            "Both: the same program runs on both channels at once, on two devices; choose "
            "the sample on each in the Sample tab (each one's limits are checked)"
        )
        self.channel_pick.currentIndexChanged.connect(self._channels_picked)
        self.channel_box = QGroupBox("Channels")
        self.channel_box.setObjectName("channel_box")
        channel_form = QFormLayout(self.channel_box)
        channel_form.addRow("run on", self.channel_pick)
        self.channel_box.setVisible(False)
        self.output_label = QLabel()
        self.output_label.setObjectName("output_state")
        self.output_label.setMinimumHeight(44)
        self.set_output_state("unknown")
        note = QLabel("Connecting puts the instrument in its safe state: source 0 V, output off.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #666; font-size: 8pt;")

        res_row = QHBoxLayout()
        res_row.addWidget(self.resource, 1)
        res_row.addWidget(self.scan_btn)
        # the VISA library, as --visa-library and [instrument] visa_library choose it
        self.visa_library = QLineEdit()
        self.visa_library.setObjectName("visa_library")
        self.visa_library.setPlaceholderText("default (@py: pyvisa-py)")
        self.visa_library.setToolTip(
            "The VISA library for VISA resources (USB0::, GPIB0::, TCPIP::, ASRL): empty for "
            "the default (pyvisa-py, or $LABCTL_VISA_LIBRARY), @ivi for NI-VISA or another "
            "IVI VISA, or the path of a VISA library"
        )
        lib_row = QHBoxLayout()
        lib_row.addWidget(QLabel("VISA library"))
        lib_row.addWidget(self.visa_library, 1)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Resource"))
        lay.addLayout(res_row)
        lay.addLayout(lib_row)
        lay.addWidget(self.scan_status)
        lay.addWidget(self.sim_box)
        lay.addWidget(self.connect_btn)
        lay.addWidget(note)
        lay.addWidget(self.output_label)
        lay.addWidget(QLabel("Identity"))
        lay.addWidget(self.identity)
        lay.addWidget(self.caps)
        lay.addWidget(self.channel_box)
        lay.addStretch(1)

        for model, desc in sim_models().items():
            self.resource.addItem(self._sim_resource(model), desc)
            self.resource.setItemData(self.resource.count() - 1, desc, 3)
        self.resource.currentTextChanged.connect(self._resource_changed)
        self.preset.currentTextChanged.connect(self._sim_options_changed)
        self.preset2.currentTextChanged.connect(self._sim_options_changed)
        self.seed.valueChanged.connect(self._sim_options_changed)
        self.real_time.toggled.connect(self._sim_options_changed)
        self._resource_changed(self.resource.currentText())
        self._sim_options_changed()

    # --- resource text <-> simulator options ---

    def _sim_resource(self, model: str) -> str:
        return with_query(
            f"sim://{model}",
            device=self.preset.currentText() or "slit_unipolar",
            seed=str(self.seed.value()),
            clock="real" if self.real_time.isChecked() else None,
        )

    def _resource_changed(self, text: str) -> None:
        is_sim = text.strip().startswith("sim://")
        self.sim_box.setEnabled(is_sim)
        if not is_sim:
            return
        query = dict(parse_qsl(urlsplit(text.strip()).query))
        two = sim_channels(text) > 1
        self.preset2.setVisible(two)
        self.preset2_label.setVisible(two)
        for widget in (self.preset, self.preset2, self.seed, self.real_time):
            widget.blockSignals(True)
        if query.get("device") and self.preset.findText(query["device"]) >= 0:
            self.preset.setCurrentText(query["device"])
        device2 = query.get("device2")
        self.preset2.setCurrentText(
            device2 if device2 and self.preset2.findText(device2) > 0 else SAME_DEVICE
        )
        if query.get("seed", "").isdigit():
            self.seed.setValue(int(query["seed"]))
        self.real_time.setChecked(query.get("clock") == "real")
        for widget in (self.preset, self.preset2, self.seed, self.real_time):
            widget.blockSignals(False)
        self.preset_desc.setText(self.preset.currentData(3) or "")

    def _sim_options_changed(self, *_args) -> None:
        text = self.resource.currentText().strip()
        if not text.startswith("sim://"):
            return
        device2 = self.preset2.currentText()
        new = with_query(
            text,
            device=self.preset.currentText(),
            device2=device2 if sim_channels(text) > 1 and device2 != SAME_DEVICE else None,
            seed=str(self.seed.value()),
            clock="real" if self.real_time.isChecked() else None,
        )
        self.preset_desc.setText(self.preset.currentData(3) or "")
        if new != text:
            self.resource.blockSignals(True)
            self.resource.setEditText(new)
            self.resource.blockSignals(False)

    def set_resource(self, resource: str) -> None:
        """Put a resource (e.g. from a recipe) in the field, keeping the real-time choice."""
        if resource.startswith("sim://"):
            resource = with_query(resource, clock="real" if self.real_time.isChecked() else None)
        self.resource.setEditText(resource)
        self._resource_changed(resource)

    def current_resource(self) -> str:
        return self.resource.currentText().strip()

    # --- discovery ---

    def scan(self) -> None:
        self.scan_btn.setEnabled(False)
        self.scan_status.setText("looking for instruments…")
        self.scan_tasks.submit(
            scan_instruments,
            self.chosen_visa_library(),
            on_done=self._scanned,
            on_error=self._scan_failed,
            key="scan",
        )

    def _scanned(self, scanned: tuple[list[tuple[str, str]], list[str]]) -> None:
        found, notes = scanned
        self.scan_btn.setEnabled(True)
        known = {self.resource.itemText(k) for k in range(self.resource.count())}
        for resource, desc in found:
            if resource not in known:
                self.resource.addItem(resource, desc)
                self.resource.setItemData(self.resource.count() - 1, desc, 3)
        self.scan_status.setText(
            f"{len(found)} instrument(s) found (see the list)"
            if found
            else "no instruments found; simulated ones are in the list"
        )
        # a kind that cannot be listed says why (the whole of it in the tooltip)
        if notes:
            self.scan_status.setText(f"{self.scan_status.text()}; {'; '.join(notes)}")
        self.scan_status.setToolTip("\n".join(notes))

    def _scan_failed(self, exc: BaseException) -> None:
        self.scan_btn.setEnabled(True)
        self.scan_status.setText(f"scan failed: {describe_error(exc)}")

    # --- connection ---

    @property
    def is_connected(self) -> bool:
        return self.driver is not None

    # --- channels ---

    def _fill_channels(self, driver) -> None:
        """Offer each channel alone and all together; hidden for one-channel instruments."""
        names = tuple(getattr(driver.capabilities, "channels", ())) if driver else ()
        self.channel_pick.blockSignals(True)
        self.channel_pick.clear()
        if len(names) > 1:
            labels = [channel_label(n) for n in names]
            for k, label in enumerate(labels):
                self.channel_pick.addItem(f"{label} only", (k,))
            self.channel_pick.addItem(
                f"both: {' and '.join(labels)} (two devices)", tuple(range(len(names)))
            )
        self.channel_pick.blockSignals(False)
        self.channel_box.setVisible(len(names) > 1)
        self._channels_picked()

    def _channels_picked(self, *_args) -> None:
        self.channels_changed.emit(self.channel_labels())

    def selected_channels(self) -> tuple[int, ...]:
        """The 0-based channels a run drives; () on a one-channel instrument (its only one)."""
        if self.channel_pick.count() == 0:
            return ()
        return tuple(self.channel_pick.currentData() or ())

    def channel_labels(self) -> list[str]:
        """'A (smua)', 'B (smub)' ... of the selected channels ([] on a one-channel one)."""
        if self.driver is None:
            return []
        names = self.driver.capabilities.channels
        return [channel_label(names[c]) for c in self.selected_channels()]

    def select_channels(self, channels: tuple[int, ...]) -> bool:
        """Choose the channel(s) (e.g. from a recipe's ``channels``); False if not offered."""
        for k in range(self.channel_pick.count()):
            if tuple(self.channel_pick.itemData(k)) == tuple(sorted(channels)):
                self.channel_pick.setCurrentIndex(k)
                return True
        return False

    def set_run_active(self, active: bool) -> None:
        """During a run the instrument cannot be changed or disconnected."""
        self.connect_btn.setEnabled(not active and not self._busy)
        self.channel_pick.setEnabled(not active)
        self.resource.setEnabled(not active and self.driver is None)
        self.visa_library.setEnabled(self.resource.isEnabled())
        self.sim_box.setEnabled(
            not active and self.driver is None and self.current_resource().startswith("sim://")
        )

    def toggle_connection(self) -> None:
        if self._busy:
            return
        if self.driver is None:
            resource = self.current_resource()
            if not resource:
                self.message.emit("error", "Give a resource to connect to")
                return
            self._set_busy(True, f"connecting to {resource}…")
            self.tasks.submit(
                connect_instrument,
                resource,
                self.chosen_visa_library(),
                on_done=lambda drv: self._connected(drv, resource),
                on_error=self._connect_failed,
            )
        else:
            driver = self.driver
            self._set_busy(True, "disconnecting…")
            self.tasks.submit(
                disconnect_instrument,
                driver,
                on_done=lambda _r: self._disconnected(None),
                on_error=self._disconnected,
            )

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self._busy = busy
        self.connect_btn.setEnabled(not busy)
        if text:
            self.identity.setText(text)

    def _connected(self, driver, resource: str) -> None:
        self._set_busy(False)
        self.driver = driver
        self.resource_in_use = resource
        self.lost_reason = ""
        self.connect_btn.setText("Disconnect")
        self.resource.setEnabled(False)
        self.visa_library.setEnabled(self.resource.isEnabled())
        self.sim_box.setEnabled(False)
        self.identity.setText(driver.identity or driver.name)
        c = driver.capabilities
        timing = "hardware-timed lists" if c.hardware_timing else "software timing"
        self.caps.setText(
            f"{c.kind.upper()}: ±{fmt_si(c.v_max, 'V')}, ±{fmt_si(c.i_max, 'A')}, {timing}"
        )
        self.set_output_state("off")
        self.message.emit("info", f"Connected to {driver.identity or resource}")
        self._fill_channels(driver)
        self.connected.emit(driver)

    def chosen_visa_library(self) -> str | None:
        """The VISA library field (None: empty, the default)."""
        return self.visa_library.text().strip() or None

    def _connect_failed(self, exc: BaseException) -> None:
        self._set_busy(False)
        self.identity.setText("not connected")
        self.message.emit("error", f"Cannot connect: {describe_error(exc)}")

    def _disconnected(self, exc: BaseException | None) -> None:
        self._set_busy(False)
        self.driver = None
        self.resource_in_use = None
        self.connect_btn.setText("Connect")
        self.resource.setEnabled(True)
        self.visa_library.setEnabled(self.resource.isEnabled())
        self._resource_changed(self.current_resource())
        self.identity.setText("not connected")
        self.caps.setText("")
        self._fill_channels(None)
        if exc is not None:
            self.set_output_state("unknown")
            self.message.emit(
                "error",
                f"Disconnected, but the safe state was not confirmed: {describe_error(exc)}. "
                "Check the instrument's output.",
            )
        else:
            self.set_output_state("unknown")
            self.message.emit("info", "Disconnected (output was switched off first)")
        self.disconnected.emit()

    def lost(self, reason: str) -> None:
        """The connection failed during use: forget the driver, state unknown."""
        driver = self.driver
        if driver is not None:
            self.tasks.submit(driver.close, on_error=lambda _e: None)
        self.lost_reason = reason or "connection lost"
        self.driver = None
        self.resource_in_use = None
        self.connect_btn.setText("Connect")
        self.resource.setEnabled(True)
        self.visa_library.setEnabled(self.resource.isEnabled())
        self._resource_changed(self.current_resource())
        self.identity.setText(f"connection lost: {reason}")
        self._fill_channels(None)
        self.set_output_state("unknown")
        self.disconnected.emit()

    def set_output_state(self, state: str) -> None:
        self.output_state = state
        text, style = {
            "off": ("OUTPUT OFF", "background: #2e7d32; color: white;"),
            "on": ("OUTPUT ON", "background: #c62828; color: white;"),
        }.get(state, ("OUTPUT: UNKNOWN", "background: #f9a825; color: black;"))
        if state == "unknown" and self.driver is None and not self.lost_reason:
            text, style = "NOT CONNECTED", "background: #9e9e9e; color: white;"
        self.output_label.setText(text)
        self.output_label.setStyleSheet(
            style + "font-size: 16pt; font-weight: bold; padding: 6px; border-radius: 4px;"
        )
        self.output_changed.emit(state)
