"""Models locked by fine-tuning vs locked from scratch (paper §7, Fig. 6; App. B.2, Fig. 13).

python sweeps/from_scratch.py                      # the embedded study, local Ray
python sweeps/from_scratch.py --quick              # a smoke run in a few minutes
python sweeps/from_scratch.py --dry-run            # validate and print the plan
python sweeps/from_scratch.py --config sweeps/configs/paper.yaml --dry-run   # its figures of the paper, priced
ray job submit -- python sweeps/from_scratch.py --config sweeps/configs/<yours>.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from pwlock.cli import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "from_scratch.yaml"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_config=DEFAULT_CONFIG, description=__doc__, sweep="from_scratch"))
