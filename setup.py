"""Builds the optional C core of TextGenVectorEnv; everything else is configured in pyproject.toml.

``optional=True``: where no C compiler is found the install goes on without it, and TextGenVectorEnv does the same
work in NumPy (slower, same results).
"""

import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "textgym._vecstep",
            sources=["textgym/_vecstep.c"],
            include_dirs=[numpy.get_include()],
            optional=True,
        )
    ]
)
