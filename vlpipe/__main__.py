"""`python -m vlpipe ...` (and `torchrun ... -m vlpipe ...`) is the `vlpipe` command."""

import sys

from vlpipe.cli import main

sys.exit(main())
