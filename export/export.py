"""Export a finished run: ``python export/export.py RUN_DIR --format savedmodel onnx --out DIR``.

The same as ``tfaug export ...``; see ``python export/export.py --help`` and docs/export.md.
"""

import sys

from tfaug.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
