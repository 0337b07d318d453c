"""Thyroid ultrasound (TUS-style, TN3K, DDTI) -> nnU-Net raw Dataset083_Thyroid.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.thyroid import main

if __name__ == "__main__":
    sys.exit(main())
