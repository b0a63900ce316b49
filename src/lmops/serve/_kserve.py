"""Import kserve without letting it read our command line.

``kserve.model_server`` runs ``argparse.parse_known_args()`` on ``sys.argv`` at import time and
takes any unambiguous prefix of its own flags: ``lmops serve --model X`` would set its
``--model_name``, and a bad value for one of its flags exits the process. Importing it through
this module, with argv reduced to the program name, keeps kserve at its defaults; lmops passes
everything it wants explicitly.
"""

from __future__ import annotations

import sys

_saved = sys.argv
sys.argv = _saved[:1]
try:
    import kserve  # noqa: F401
    import kserve.model_server  # noqa: F401
finally:
    sys.argv = _saved
