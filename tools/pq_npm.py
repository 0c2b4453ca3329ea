#!/usr/bin/env python3
"""pq_npm: build, pack, verify and test an npm line of the patch queue (e.g. ``js-1.9.0``).

The command line of ``patchqueue.npm`` (``tools/patchqueue/npm.py``):
``python3 tools/pq_npm.py --line js-1.9.0 <build|test|pristine-check|prettier|bench>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patchqueue.npm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
