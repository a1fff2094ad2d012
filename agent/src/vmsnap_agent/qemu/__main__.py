"""``python -m vmsnap_agent.qemu``: build (or find in the cache) the test guest."""

from __future__ import annotations

from .guest_image import build_guest_image


def main() -> None:
    image = build_guest_image()
    print(f"kernel={image.kernel}\ninitrd={image.initrd}")


if __name__ == "__main__":
    main()
