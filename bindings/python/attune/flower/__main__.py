"""``python -m attune.flower simulate ...``: see attune.flower.simulate."""

import sys

from .simulate import main

if len(sys.argv) < 2 or sys.argv[1] != "simulate":
    sys.exit("usage: python -m attune.flower simulate --data FILE.csv [options]; see --help")
main(sys.argv[2:])
