"""OpenVINO imported to run a converted model: without its model converter, which `import openvino` loads too and
which only a model's first run needs (0.1-0.2 s of every run's start-up)."""

from __future__ import annotations

import sys
from types import ModuleType

CONVERTER = "openvino.tools.ovc"


def openvino_runtime() -> ModuleType:
    """The openvino package. Imported first here, its converter is left out: openvino's own __init__ imports it
    inside `try: ... except ImportError`, and a None in sys.modules makes that import fail at once. Later imports
    of the converter (a conversion: openvino_export) find it as usual."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = CONVERTER not in sys.modules
    if blocked:
        sys.modules[CONVERTER] = None  # type: ignore[assignment]
    try:
        import openvino
    except ImportError:
        if not blocked:
            raise
        del sys.modules[CONVERTER]
        sys.modules.pop("openvino", None)
        import openvino  # an openvino whose __init__ needs its converter: the whole package, as before
    finally:
        if blocked and sys.modules.get(CONVERTER, False) is None:
            del sys.modules[CONVERTER]
    return openvino
