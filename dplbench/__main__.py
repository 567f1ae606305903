import sys

from dplbench.cli import main

sys.exit(main())
