"""The one place the controller imports Keras (and with it TensorFlow).

TensorFlow 2.21 prints start-up notices on stderr at import (oneDNN, CPU features, absl's
"log messages before InitializeLog") through absl, ignoring TF_CPP_MIN_LOG_LEVEL. The CLI
promises one line on stderr per error and the demo a clean screen, so the first import
runs with file descriptor 2 captured; everything except those notices is passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Any

_NOTICES = re.compile(r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|"
                      r"TF_ENABLE_ONEDNN_OPTS|This TensorFlow binary is optimized|"
                      r"rebuild TensorFlow with the appropriate compiler flags")


def keras() -> Any:
    """The keras module, imported quietly the first time."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras as module
        finally:   # restore stderr and pass on what was not a notice, even if it failed
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines()
                    if line.strip() and not _NOTICES.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return module
