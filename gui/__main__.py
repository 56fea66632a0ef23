"""``python -m labctl.gui [--db URL]`` (the same as ``labctl gui``)."""

from labctl.gui.app import main

raise SystemExit(main())
