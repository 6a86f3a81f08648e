"""`python -m node` is the `asgard` command."""

import sys

from node.cli import main

sys.exit(main())
