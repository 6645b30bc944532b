"""vxcap: AWS VPC Traffic Mirroring (VXLAN) to Resurface API calls."""

import os as _os

__version__ = "0.1.0"

# Modules written in Python and compiled by Cython when built (setup.py, src_c/vxcap/*.pxd). With
# VXCAP_PURE_PYTHON=1 their Python source runs instead: the readable twin, and the benchmarks' ablation.
COMPILED_PY_MODULES = ("vxcap.http", "vxcap.reassembly", "vxcap.message")

if _os.environ.get("VXCAP_PURE_PYTHON", "") not in ("", "0"):
    import importlib.util as _util
    import sys as _sys

    class _SourceFirst:
        """A meta path finder that loads the compiled-Python modules from their .py files."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name not in COMPILED_PY_MODULES:
                return None
            here = _os.path.dirname(__file__)
            source = _os.path.join(here, name.rsplit(".", 1)[1] + ".py")
            return _util.spec_from_file_location(name, source)

    _sys.meta_path.insert(0, _SourceFirst())


def compiled() -> dict:
    """Which accelerated modules are native in this process (for summaries and benchmarks)."""
    import importlib

    out = {}
    for name in COMPILED_PY_MODULES:
        mod = importlib.import_module(name)
        out[name] = not (getattr(mod, "__file__", "") or "").endswith(".py")
    return out
