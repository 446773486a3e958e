"""Run several ``ibtpo train`` commands one after another in one (torchrun-launched) process: argument groups are
separated by ``---``. Tests use it to pay the launch cost of a 2-rank job once for several runs."""

import sys

from ibtpo.cli import main

if __name__ == "__main__":
    groups, current = [], []
    for arg in sys.argv[1:]:
        if arg == "---":
            groups.append(current)
            current = []
        else:
            current.append(arg)
    groups.append(current)
    for args in groups:
        code = main(["train", *args])
        if code:
            sys.exit(code)
