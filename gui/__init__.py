"""The technician's desktop app (PyQt5 + pyqtgraph): ``labctl gui`` or ``python -m labctl.gui``.

It talks to labctl only through the engine, the store and the protocols; every instrument
and database call runs off the GUI thread (see :mod:`gui.tasks`).
"""
