"""ACDC cine-MRI -> nnU-Net raw Dataset027_ACDC (as nnU-Net's own converter, plus its splits).

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.acdc import main

if __name__ == "__main__":
    sys.exit(main())
