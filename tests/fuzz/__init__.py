"""Property-based fuzzing of every RPC of the host, an SDK-served driver and the
sim agent (issue 12): ``python -m tests.fuzz --count 10000`` on demand; a
bounded run is part of the test suite (``test_fuzz.py``)."""
