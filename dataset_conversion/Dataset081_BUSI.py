"""BUSI breast ultrasound -> nnU-Net raw Dataset081_BUSI.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.busi import main

if __name__ == "__main__":
    sys.exit(main())
