"""``python -m livecap_models``."""

import sys

from livecap_models.cli import main

raise SystemExit(main(sys.argv[1:]))
