"""``python -m gui [--db URL]`` (the same as ``labctl gui``)."""

from gui.app import main

raise SystemExit(main())
