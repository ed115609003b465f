"""SynIC tests: make the shared harness (``synic_harness.py``, beside this file) importable.

pytest runs in importlib mode, which never puts test directories on ``sys.path``; the harness module has a
name unique to this directory so adding the directory cannot shadow anything else.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
