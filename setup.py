"""Build the native pipeline stages.

Every ``src_c/NAME.pyx`` becomes the extension module ``vxcap._NAME`` (asyncpg's layout: one native module
per subsystem, declarations in ``.pxd`` beside it). ``VXCAP_DEBUG_BUILD=1`` turns on Cython's bounds and
wrap-around checks and keeps assertions, for fuzzing (issue: hostile input) and for debugging.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VXCAP_DEBUG_BUILD", "") not in ("", "0")

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = []
for pyx in sorted(glob.glob("src_c/*.pyx")):
    name = os.path.splitext(os.path.basename(pyx))[0]
    extensions.append(
        Extension(
            f"vxcap._{name}",
            [pyx],
            include_dirs=["src_c"],
            extra_compile_args=["-O2"] + ([] if DEBUG else ["-DNDEBUG"]),
        )
    )

# The per-call path (reassembly, HTTP framing, message building) is written in Python and compiled by Cython
# with C types from augmenting declarations in src_c/vxcap/NAME.pxd ("pure Python mode"): one source, which
# also runs uncompiled as the readable twin (VXCAP_PURE_PYTHON=1 loads the .py files, see vxcap/__init__.py).
for name in ("http", "reassembly", "message"):
    extensions.append(
        Extension(
            f"vxcap.{name}",
            [f"vxcap/{name}.py"],
            include_dirs=["src_c"],
            extra_compile_args=["-O2"] + ([] if DEBUG else ["-DNDEBUG"]),
        )
    )


def _declarations_changed() -> bool:
    """Cython does not follow a changed augmenting .pxd into the modules that cimport it: regenerate every
    module when any declaration file is newer than the oldest generated C file."""
    generated = glob.glob("build/cython/**/*.c", recursive=True)
    declared = glob.glob("src_c/**/*.pxd", recursive=True)
    if not generated or not declared:
        return False
    return max(map(os.path.getmtime, declared)) > min(map(os.path.getmtime, generated))


setup(
    ext_modules=cythonize(
        extensions,
        # Type annotations in the .py modules are documentation for Python readers; the C types come from
        # the augmenting .pxd files only.
        compiler_directives={**directives, "annotation_typing": False},
        include_path=["src_c"],
        build_dir="build/cython",
        force=_declarations_changed(),
    ),
)
