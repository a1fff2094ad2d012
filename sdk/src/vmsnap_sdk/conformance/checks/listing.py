"""list: ListVMSnapshots pages through what the array holds, each snapshot once, tagged."""

from __future__ import annotations

from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import INVALID

LIST = (Capability.LIST,)
COUNT = 5


async def take_several(s: Session, count: int = COUNT) -> list[str]:
    volumes = await s.volumes(1)
    return [(await s.take(s.new_id(), volumes)).vm_snapshot_id for _ in range(count)]


@check(
    "list.contains_taken", "A taken snapshot is listed with its handles and VM id", requires=LIST
)
async def contains_taken(s: Session) -> None:
    snap = await s.take(s.new_id(), await s.volumes(2))
    found = [r for r in await s.list_all(s.vm_id) if r.vm_snapshot_id == snap.vm_snapshot_id]
    expect(len(found) == 1, f"{snap.vm_snapshot_id} listed once", len(found))
    expect(handles(found[0]) == handles(snap), handles(snap), handles(found[0]))
    expect(found[0].vm_id == s.vm_id, f"vm_id {s.vm_id!r}", repr(found[0].vm_id))


@check(
    "list.paging_complete",
    "Paging with page_size=2 reaches every snapshot exactly once",
    requires=LIST,
)
async def paging_complete(s: Session) -> None:
    taken = await take_several(s)
    seen: list[str] = []
    token = ""
    for _ in range(COUNT * 2 + 2):
        page = await s.list_page(2, token, s.vm_id)
        seen.extend(r.vm_snapshot_id for r in page.vm_snapshots)
        token = page.next_page_token
        if not token:
            break
    expect(not token, f"the pages to end within {COUNT * 2 + 2} calls", "more pages")
    expect(sorted(seen) == sorted(taken), f"each of {sorted(taken)} once", sorted(seen))


@check("list.page_size_respected", "No page is larger than page_size", requires=LIST)
async def page_size(s: Session) -> None:
    await take_several(s, 3)
    page = await s.list_page(1, "", s.vm_id)
    expect(
        len(page.vm_snapshots) <= 1, "at most 1 snapshot with page_size=1", len(page.vm_snapshots)
    )
    expect(bool(page.next_page_token), "a next_page_token while more remain", "none")


@check(
    "list.no_duplicates", "Across all pages of the whole list no id appears twice", requires=LIST
)
async def no_duplicates(s: Session) -> None:
    await take_several(s)
    # Small pages over this check's VM, then the whole array in default pages.
    for vm_id, size in ((s.vm_id, 2), ("", 0)):
        ids = [r.vm_snapshot_id for r in await s.list_all(vm_id, page_size=size)]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        expect(not twice, "every id once", f"duplicated with page_size={size}: {twice}")


@check(
    "list.filter_vm_id", "vm_id filters: only that VM's snapshots, and all of them", requires=LIST
)
async def filter_vm(s: Session) -> None:
    volumes = await s.volumes(1)
    mine = (await s.take(s.new_id(), volumes)).vm_snapshot_id
    other_vm = f"{s.vm_id}-other"
    theirs = (await s.take(s.new_id(), volumes, vm_id=other_vm)).vm_snapshot_id
    listed = await s.list_all(s.vm_id)
    ids = [r.vm_snapshot_id for r in listed]
    expect(ids == [mine], f"only {mine} for vm_id {s.vm_id}", ids)
    ids = [r.vm_snapshot_id for r in await s.list_all(other_vm)]
    expect(ids == [theirs], f"only {theirs} for vm_id {other_vm}", ids)


@check(
    "list.empty_for_unknown_vm",
    "Listing a VM with no snapshots gives an empty last page",
    requires=LIST,
)
async def empty_vm(s: Session) -> None:
    await take_several(s, 1)  # this check's VM has one; the other VM has none
    page = await expect_ok(s.list_page(0, "", f"{s.vm_id}-none"), "list for an unknown VM")
    expect(
        not page.vm_snapshots and not page.next_page_token,
        "no snapshots and no token",
        f"{len(page.vm_snapshots)} snapshots, token {page.next_page_token!r}",
    )


@check(
    "list.invalid_token", "A page token the driver never issued is INVALID_ARGUMENT", requires=LIST
)
async def invalid_token(s: Session) -> None:
    await take_several(s, 2)
    for token in ("vmsnap-conformance-not-a-token", "%%%"):
        await expect_code(
            s.list_page(1, token, s.vm_id), INVALID, what=f"list with page_token {token!r}"
        )


@check(
    "list.page_size_bounds", "page_size below 0 or above 1000 is INVALID_ARGUMENT", requires=LIST
)
async def page_size_bounds(s: Session) -> None:
    for size in (-1, 1001):
        await expect_code(s.list_page(size), INVALID, what=f"list with page_size {size}")
