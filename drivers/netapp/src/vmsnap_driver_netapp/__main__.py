"""``python -m vmsnap_driver_netapp``: the same as the console script."""

from vmsnap_driver_netapp._main import main

main()
