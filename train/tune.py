"""Search λ_adv and λ_LD: ``python train/tune.py --dataset phantom --tuner-dir DIR``.

The same as ``tfaug tune ...``; see ``python train/tune.py --help`` and docs/tuning.md.
"""

import sys

from tfaug.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
