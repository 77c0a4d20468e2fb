"""python -m emplifai.sample [DEST] [--force]: copy the shipped sample into DEST (default data/)."""

import sys
from pathlib import Path

from emplifai.sample import write_sample

if {"-h", "--help"} & set(sys.argv[1:]):
    print(__doc__)
    sys.exit(0)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
target = Path(args[0] if args else "data")
copied = write_sample(target, force="--force" in sys.argv)
print(f"sample data {'copied to' if copied else 'left as is in'} {target}/")
