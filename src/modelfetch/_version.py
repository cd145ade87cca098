"""The package version: the one place it is written.

pyproject.toml reads it (``[tool.setuptools.dynamic]``), so the wheel's metadata,
``modelfetch.__version__`` and ``modelfetch --version`` cannot disagree.
"""

__version__ = "0.2.0"
