"""ICBM152 2009a symmetric template (shipped in the nilearn wheel) -> nnU-Net raw Dataset084_MNI152Tissue: 2-D axial
grey/white-matter slices, the test slab spatially separated from the training slices.

Needs nilearn (pip install "nnunet_ext[mni152]") unless -i names a folder with the three template files. Run with
--help for the resolution, the label rule, the split and the options.
"""

import sys

from nnunet_ext.conversion.mni152 import main

if __name__ == "__main__":
    sys.exit(main())
