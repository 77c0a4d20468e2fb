"""`python -m emplifai <stage> [overrides]`: the `emplifai` command without its console script."""

import sys

from emplifai.cli import main

sys.exit(main())
