"""RL elicitation: expert iteration, filtering, DPO and iterated DPO (paper §6, Fig. 5).

python sweeps/rl.py                      # the embedded study, local Ray
python sweeps/rl.py --quick              # a smoke run in a few minutes
python sweeps/rl.py --dry-run            # validate and print the plan
python sweeps/rl.py --config sweeps/configs/paper.yaml --dry-run   # its figures of the paper, priced
ray job submit -- python sweeps/rl.py --config sweeps/configs/<yours>.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from pwlock.cli import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl.yaml"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_config=DEFAULT_CONFIG, description=__doc__, sweep="rl"))
