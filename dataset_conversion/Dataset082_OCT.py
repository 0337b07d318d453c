"""OCT macular edema / macular hole (images + masks) -> nnU-Net raw Dataset082_OCT.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.oct import main

if __name__ == "__main__":
    sys.exit(main())
