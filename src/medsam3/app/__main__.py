import sys

from medsam3.app.cli import main

sys.exit(main())
