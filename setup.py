"""Builds the optional C core of TextGenVectorEnv; everything else is configured in pyproject.toml.

Optional: where it cannot be compiled (no C compiler) the install goes on without it, and TextGenVectorEnv does the
same work in NumPy (slower, same results).
"""

from setuptools import Extension, setup

try:
    import numpy  # in the build environment through pyproject.toml's build-system requires
except ImportError:  # only without build isolation and without NumPy: install without the C core
    numpy = None

core = Extension(
    "textgym._vecstep",
    sources=["textgym/_vecstep.c"],
    include_dirs=[numpy.get_include()] if numpy else [],
    optional=True,  # a compile error is a warning, not a failed install
)
setup(ext_modules=[core] if numpy else [])
