"""AMOS 2022 task 2 (CT + MRI) -> nnU-Net raw Dataset219_AMOS2022_postChallenge_task2.

Run with --help for the options and the source layouts it reads.
"""

import sys

from nnunet_ext.conversion.amos import main

if __name__ == "__main__":
    sys.exit(main(task=2))
