"""vmsnap hypervisor agents.

Sub-packages implement the HypervisorAgent contract for a hypervisor;
``vmsnap_agent.qemu`` drives real QEMU/KVM processes over QMP.
"""
