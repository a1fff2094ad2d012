"""Emulators of two storage vendors' management APIs, for vmsnap's tests and demos.

``vmsnap_emulators.element`` speaks SolidFire Element JSON-RPC and keeps volume bytes in a
copy-on-write block store; ``vmsnap_emulators.ontap`` speaks the ONTAP REST API and keeps
volumes as real directories of real files (an NFS export). Both run as their own process
(``vmsnap-emulator element|ontap ...``) over HTTPS with HTTP Basic auth.
"""

__version__ = "0.1.0"
