"""`python -m recstack ...` (what torchrun runs with `-m recstack train ...`): the recstack command."""

import sys

from recstack.cli import main

sys.exit(main())
