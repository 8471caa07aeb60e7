import sys

from synapse7.cli import main

sys.exit(main())
