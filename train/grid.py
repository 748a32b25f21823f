"""Run the experiment grid: ``python train/grid.py --dataset phantom --nl 1 --methods aff,gdgi``.

The same as ``tfaug grid ...``; see ``python train/grid.py --help`` and docs/grid.md.
"""

import sys

from tfaug.cli import main

if __name__ == "__main__":
    sys.exit(main(["grid", *sys.argv[1:]]))
