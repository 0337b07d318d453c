"""Synapse multi-organ CT (raw BTCV or the TransUNet release) -> nnU-Net raw Dataset017_Synapse.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.synapse import main

if __name__ == "__main__":
    sys.exit(main())
