"""``labctl gui [--db URL]``: start the desktop app; ``main(argv)`` returns the exit code."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Sequence

SWITCH_INTERVAL_S = 0.0005


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labctl gui", description="The labctl desktop app")
    p.add_argument(
        "--db", metavar="URL", help="database URL (default: $LABCTL_DB or the per-user SQLite file)"
    )
    p.add_argument(
        "--no-scan", action="store_true", help="do not look for VISA instruments at start"
    )
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="write a PNG of the window once it is shown, then quit (for docs and checks)",
    )
    return p


def configure_threads() -> None:
    """Let the GUI thread get the interpreter back quickly.

    The engine and the store's writer run Python on other threads; with the default 5 ms
    switch interval every return of the GUI thread from Qt may wait that long for the GIL,
    and a frame makes hundreds of such calls. 0.5 ms keeps the window responsive at
    100 k points/s for a few percent of acquisition throughput.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("labctl").setLevel(logging.INFO)
    from PyQt5.QtCore import Qt, QTimer
    from PyQt5.QtWidgets import QApplication

    interrupted: list[int] = []
    window = None

    def on_ctrl_c(signum, _frame) -> None:
        # as the window's close button (in Qt's loop): a run is aborted to safe state first
        interrupted.append(signum)
        if window is not None and window.isVisible():
            QTimer.singleShot(0, window.close)

    previous_sigint = signal.signal(signal.SIGINT, on_ctrl_c)

    configure_threads()
    QApplication.setAttribute(Qt.AA_EnableHighDpiScaling, True)
    app = QApplication.instance() or QApplication(["labctl"])
    app.setApplicationName("labctl")
    from labctl.gui.main_window import MainWindow

    window = MainWindow(args.db, scan_visa=not args.no_scan)
    previous_hook = sys.excepthook

    def show_unexpected(exc_type, exc, tb) -> None:
        # a bug must not kill the app mid-run nor show a traceback to the technician: log it,
        # say it in one line
        logging.getLogger("labctl.gui").error(
            "unexpected error:\n%s", "".join(traceback.format_exception(exc_type, exc, tb))
        )
        if issubclass(exc_type, KeyboardInterrupt):
            previous_hook(exc_type, exc, tb)
            return
        with contextlib.suppress(Exception):
            window.show_message(
                "error", f"Unexpected error (details in the log): {exc_type.__name__}: {exc}"
            )

    sys.excepthook = show_unexpected
    heartbeat = QTimer()  # Qt's loop runs no Python by itself: let a Ctrl-C handler run
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(200)
    window.show()
    if interrupted:  # Ctrl-C while the app was starting
        QTimer.singleShot(0, window.close)
    if args.screenshot:

        def shoot() -> None:
            window.grab().save(args.screenshot, "PNG")
            window.close()

        QTimer.singleShot(1500, shoot)
    try:
        code = int(app.exec_())
        return 130 if interrupted else code  # 128 + SIGINT, as after Ctrl-C anywhere
    finally:
        sys.excepthook = previous_hook
        signal.signal(signal.SIGINT, previous_sigint)


if __name__ == "__main__":
    raise SystemExit(main())
