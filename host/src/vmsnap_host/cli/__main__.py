"""``python -m vmsnap_host.cli`` is ``vmsnap``."""

from vmsnap_host.cli._app import main

main()
