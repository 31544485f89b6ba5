import os

# OpenMP threads that spin while waiting make torch ~10x slower whenever another process shares the
# cores (measured: 108 s vs 12 s for the same D^t run); passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli.main import main  # noqa: E402

raise SystemExit(main())
