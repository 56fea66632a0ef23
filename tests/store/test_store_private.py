"""Private by default, final status never lost (issue 12, item 15): the default database
folder is 0700 and its files (with SQLite's -wal and -shm) 0600, the emulator registry is
a private folder, and a store that cannot be written when a run ends keeps the run's final
status in a private journal applied on the next open."""

from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy import event

from labctl import discovery
from labctl.store import Store, db, journal
from tests.store.storetest import chunk_of


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user data folder of the test's own, the default store in it, umask 022."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv(db.ENV_VAR, raising=False)
    old = os.umask(0o022)
    yield db.default_db_path()
    os.umask(old)


def test_the_default_store_is_private(home):
    with Store.open() as store:
        sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
        run_id = store.create_run(protocol="iv", parameters={}, sample_id=sample.id)
        with store.writer(run_id) as writer:
            writer.put(chunk_of(10))
        files = [home, home.with_name("labctl.db-wal"), home.with_name("labctl.db-shm")]
        assert all(f.exists() for f in files)
        assert mode(home.parent) == 0o700
        assert [mode(f) for f in files] == [0o600] * 3
        assert mode(store.data_dir()) == 0o700


def test_an_older_default_store_left_readable_is_made_private(home):
    home.parent.mkdir(parents=True)
    os.chmod(home.parent, 0o755)
    Store.open(db.sqlite_url(home)).close()
    os.chmod(home, 0o644)
    os.chmod(home.parent, 0o755)
    Store.open().close()
    assert (mode(home.parent), mode(home)) == (0o700, 0o600)


def test_a_new_store_elsewhere_is_created_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "lab" / "runs" / "new.db"
        Store.open(path).close()
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == mode(path.parent.parent) == 0o700


def test_the_emulator_registry_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv(discovery.ENV_RUNTIME_DIR, str(tmp_path / "rt"))
    old = os.umask(0o022)
    try:
        (tmp_path / "rt" / "emulators").mkdir(parents=True)  # left by an older labctl
        os.chmod(tmp_path / "rt" / "emulators", 0o755)
        path = discovery.register_emulator("TCPIP::127.0.0.1::5025::SOCKET", "keithley2450")
    finally:
        os.umask(old)
    assert (mode(path.parent), mode(path)) == (0o700, 0o600)
    assert [e["resource"] for e in discovery.running_emulators()] == [
        "TCPIP::127.0.0.1::5025::SOCKET"
    ]
    discovery.unregister_emulator(path)
    if os.getuid() == 0:  # another user's folder where ours should be is refused
        os.chown(path.parent, 4321, 4321)
        with pytest.raises(PermissionError, match="belongs to another user"):
            discovery.register_emulator("TCPIP::127.0.0.1::5026::SOCKET", "keithley2450")


def make_read_only(store: Store) -> None:
    """The fault: from now on the database refuses writes (a read-only disk, a server
    switched to read-only), through the real error path of each backend."""
    store.engine.dispose()  # connections already open would go on writing
    sqlite = store.path is not None

    @event.listens_for(store.engine, "connect")
    def read_only(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        ro = "PRAGMA query_only = ON" if sqlite else "SET default_transaction_read_only = on"
        cur.execute(ro)
        cur.close()
        if not sqlite:
            dbapi_conn.commit()


def test_a_store_read_only_at_finish_keeps_the_final_status(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # a server URL's journal
    with Store.open(db_url) as store:
        sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
        run_id = store.create_run(protocol="iv", parameters={}, sample_id=sample.id)
        with store.writer(run_id) as writer:
            writer.put(chunk_of(100))
        make_read_only(store)
        kept = store.finish_run(run_id, "completed", None)
        assert kept == journal.journal_path(db_url) and mode(kept) == 0o600
        assert store.run(run_id)["status"] == "running"  # the database could not take it
    path = db.sqlite_path(db_url)
    if path is not None:  # still read-only: the journal waits
        with Store.open(f"sqlite:///file:{path}?mode=ro&uri=true") as ro:
            assert ro.run(run_id)["status"] == "running"
        assert journal.pending(db_url)
    with Store.open(db_url) as store:
        run = store.run(run_id)
        assert (run["status"], run["n_points"], run["error"]) == ("completed", 100, None)
        events = store.events(run_id)
        (note,) = events[events["kind"] == "final_status"]["message"]
        assert note.startswith("final status completed applied from the journal")
        assert "interrupted" not in set(events["kind"])
    assert not kept.exists()


def test_a_run_whose_store_turns_read_only_at_its_end_reads_completed(tmp_path):
    from labctl.protocols.iv_hysteresis import IVHysteresis

    import labctl
    from labctl.engine import RunEngine

    class TurnsReadOnly(Store):
        def add_metrics(self, run_id, rows):  # the last write before finish_run
            n = super().add_metrics(run_id, rows)
            make_read_only(self)
            return n

    url = db.sqlite_url(tmp_path / "runs.db")
    store = TurnsReadOnly.open(url)
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")
    proto = IVHysteresis({"amplitude_v": 0.5, "frequencies_hz": [4], "cycles": 1})
    result = RunEngine(store).run(proto, driver, sample, handle_signals=False)
    assert result.status == "completed" and result.n_points == 200
    assert any("final status (completed) is kept in" in w for w in result.warnings)
    store.close()
    with Store.open(url) as again:
        assert again.run(result.run_id)["status"] == "completed"
        assert again.run(result.run_id)["n_points"] == 200
