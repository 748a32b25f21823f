"""Train one run of Algorithm 1: ``python train/run.py --dataset acdc --data-root P --nl 1``.

The same as ``tfaug train ...``; see ``python train/run.py --help``.
"""

import sys

from tfaug.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
