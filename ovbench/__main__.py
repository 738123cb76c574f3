import sys

from ovbench.cli import main

sys.exit(main())
