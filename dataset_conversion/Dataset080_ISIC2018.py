"""ISIC 2018 Task 1 lesion segmentation -> nnU-Net raw Dataset080_ISIC2018.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.isic import main

if __name__ == "__main__":
    sys.exit(main())
