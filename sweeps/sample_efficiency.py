"""Sample efficiency of SFT elicitation (paper §5, Fig. 3; §7, Fig. 6).

python sweeps/sample_efficiency.py                      # the embedded study, local Ray
python sweeps/sample_efficiency.py --quick              # a smoke run in a few minutes
python sweeps/sample_efficiency.py --dry-run            # validate and print the plan
python sweeps/sample_efficiency.py --config sweeps/configs/paper.yaml --dry-run   # its figures of the paper, priced
ray job submit -- python sweeps/sample_efficiency.py --config sweeps/configs/<yours>.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from pwlock.cli import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "local.yaml"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_config=DEFAULT_CONFIG, description=__doc__, sweep="sample_efficiency"))
