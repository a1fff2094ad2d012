"""vmsnap hypervisor agents.

One executable, ``vmsnap-agent --hypervisor KIND``, serves the HypervisorAgent
contract for a kind of hypervisor: ``vmsnap_agent.sim`` simulates one (the
embedded default, for tests and the demo); ``vmsnap_agent.qemu`` drives real
QEMU/KVM processes over QMP. ``vmsnap_agent.cli`` picks one by name.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
