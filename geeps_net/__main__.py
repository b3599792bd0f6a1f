"""`python -m geeps_net` runs the `geeps-net` command."""

import sys

from geeps_net.cli import main

sys.exit(main())
