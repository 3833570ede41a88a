"""``python -m hf_llc`` runs the ``hf-llc`` command line."""

import sys

from .cli import main

sys.exit(main())
