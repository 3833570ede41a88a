"""``python -m hf_llc.cli`` runs the ``hf-llc`` command line."""

import sys

from .commands import main

sys.exit(main())
