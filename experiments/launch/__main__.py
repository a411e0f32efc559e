"""``python -m experiments.launch``: the launcher's command line (:mod:`experiments.launch.launcher`)."""

import sys

from .launcher import main

if __name__ == "__main__":
    sys.exit(main())
