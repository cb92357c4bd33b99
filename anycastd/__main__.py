import sys

from anycastd.cli import main

sys.exit(main())
