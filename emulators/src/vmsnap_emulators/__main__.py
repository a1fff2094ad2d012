"""``python -m vmsnap_emulators`` = ``vmsnap-emulator``."""

import sys

from .cli import main

sys.exit(main())
