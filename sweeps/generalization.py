"""Generalization of SFT elicitation across domains (paper §5.2, Fig. 4, 10; App. B.3.4, Fig. 17).

python sweeps/generalization.py                      # the embedded study, local Ray
python sweeps/generalization.py --quick              # a smoke run in a few minutes
python sweeps/generalization.py --dry-run            # validate and print the plan
python sweeps/generalization.py --config sweeps/configs/paper.yaml --dry-run   # its figures of the paper, priced
ray job submit -- python sweeps/generalization.py --config sweeps/configs/<yours>.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from pwlock.cli import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "generalization.yaml"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_config=DEFAULT_CONFIG, description=__doc__, sweep="generalization"))
