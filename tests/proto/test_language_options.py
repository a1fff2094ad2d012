"""Every contract file carries the language options, chosen so no generated name clashes.

The cross-language check (tests/contracts/test_cross_language.py) compiles the
contracts for Java and Go; this test checks the same rules from the
descriptors alone, in every environment.
"""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor

from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2

FILES: list[FileDescriptor] = [
    common_pb2.DESCRIPTOR,
    driver_pb2.DESCRIPTOR,
    host_pb2.DESCRIPTOR,
    hypervisor_pb2.DESCRIPTOR,
]


def _service(file: FileDescriptor) -> str:
    return file.package.split(".")[1]


def _top_level(file: FileDescriptor) -> set[str]:
    return {*file.message_types_by_name, *file.enum_types_by_name, *file.services_by_name}


def test_every_file_sets_every_language_option() -> None:
    for file in FILES:
        opts = file.GetOptions()
        name = _service(file)
        cap = name.capitalize()
        assert opts.java_package == f"io.vmsnap.{name}.v1", file.name
        assert opts.java_multiple_files, file.name
        assert opts.java_outer_classname == f"{cap}Proto", file.name
        assert opts.go_package == f"vmsnap.io/gen/go/vmsnap/{name}/v1;{name}v1", file.name
        assert opts.csharp_namespace == f"Vmsnap.{cap}.V1", file.name
        assert opts.php_namespace == f"Vmsnap\\{cap}\\V1", file.name
        assert opts.ruby_package == f"Vmsnap::{cap}::V1", file.name
        assert opts.objc_class_prefix.startswith("VMS"), file.name


def test_no_generated_name_clashes() -> None:
    """Java: one package per contract and an outer class that is no message, enum or
    service (nor a service's ...Grpc class) of it; Objective-C has one global
    namespace, so the class prefixes differ; so do Go, C#, PHP and Ruby namespaces."""
    for option in (
        "java_package",
        "go_package",
        "csharp_namespace",
        "objc_class_prefix",
        "php_namespace",
        "ruby_package",
    ):
        values = [getattr(f.GetOptions(), option) for f in FILES]
        assert len(set(values)) == len(values), (option, values)
    for file in FILES:
        outer = file.GetOptions().java_outer_classname
        taken = _top_level(file) | {f"{s}Grpc" for s in file.services_by_name}
        assert outer not in taken, (file.name, outer)
    # The names the issue met: the host's Operation message and the driver's
    # Operation enum, the host's Driver message and the driver contract, now in
    # different packages with outer classes of their own.
    assert "Operation" in host_pb2.DESCRIPTOR.message_types_by_name
    assert "Operation" in driver_pb2.DESCRIPTOR.enum_types_by_name
    assert "Driver" in host_pb2.DESCRIPTOR.message_types_by_name
    assert driver_pb2.DESCRIPTOR.GetOptions().java_outer_classname == "DriverProto"
