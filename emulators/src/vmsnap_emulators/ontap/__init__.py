"""NetApp ONTAP REST emulator (``/api/...``).

Modules: :mod:`.errors` (error body and codes), :mod:`.query` (``fields=``, filters,
``max_records`` paging), :mod:`.fsops` (cheap file copies: reflink, sparse copy), :mod:`.state`
(volumes as real directories of an NFS-style export, snapshots, file clones),
:mod:`.jobs` (the asynchronous job model), :mod:`.responder` (request checks and answer
shapes shared by routes), :mod:`.volumes` and :mod:`.files` (storage routes),
:mod:`.filedata` (file contents as multipart/form-data), :mod:`.app` (dispatch,
cluster/job/SVM and emulator-only routes).
"""
