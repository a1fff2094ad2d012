"""``python -m vmsnap_driver_solidfire``: the same as the console script."""

from vmsnap_driver_solidfire._main import main

main()
