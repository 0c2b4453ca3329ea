#!/usr/bin/env python3
"""pq: the patch queue of the rtretry fork of livekit-agents (Python) and agents-js (npm).

The command line of the ``patchqueue`` package (``tools/patchqueue/``, one module per
concern): ``python3 tools/pq.py [--line <line>] <command>`` or ``python3 -m tools.pq ...``;
``--help`` lists the commands. This file is only the entry point: it puts ``tools/`` on
``sys.path`` (a package beside a module of the same name could not be imported as ``pq``), so
that ``patchqueue`` is imported under one name however the tool is started.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchqueue.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
