import sys

from tamec.cli import main

sys.exit(main())
