"""AMOS 2022 task 1 (CT only) -> nnU-Net raw Dataset218_AMOS2022_postChallenge_task1.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.amos import main

if __name__ == "__main__":
    sys.exit(main(task=1))
