"""mssgate's test suite.

``MSSGATE_TEST_BUILD``: a folder holding another build of mssgate (``scripts/compile.sh``: the
core compiled with mypyc), tested instead of the checkout's plain Python sources.
"""

import os
import sys
from pathlib import Path

_BUILD = os.environ.get("MSSGATE_TEST_BUILD")
if _BUILD:
    sys.path.insert(0, _BUILD)
    import mssgate.mime

    if not Path(mssgate.mime.__file__ or "").is_relative_to(_BUILD):
        raise RuntimeError(f"MSSGATE_TEST_BUILD={_BUILD}: mssgate was imported from elsewhere")
