"""FLARE22 abdominal CT (labelled, unlabelled, testing) -> nnU-Net raw Dataset022_FLARE22.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.flare import main

if __name__ == "__main__":
    sys.exit(main())
