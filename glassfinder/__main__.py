import sys

from glassfinder.cli import main

sys.exit(main())
