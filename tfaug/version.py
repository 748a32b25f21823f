"""The version of tfaug (also in setup.py), recorded in every results.json and export.json."""

__version__ = "0.1.0"
