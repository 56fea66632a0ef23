"""In a real Jupyter kernel (ipykernel, driven by jupyter_client as a notebook front end is):
the kernel's interrupt (the notebook's stop button, Ctrl-C) inside handle.wait() or inside
labctl.run aborts the run to safe state, stores it as aborted with its points, and the cell
ends with RunInterrupted. The run is held at its first chunk by an Event until it is asked
to abort, so the interrupt always lands mid-run; nothing sleeps. (The cell says WAITING
without flushing: the kernel sends it from its IO thread a moment later, when the cell is
inside wait(); a flushed print waits for that send, and the interrupt could land in it.)"""

import pytest

jupyter_client = pytest.importorskip("jupyter_client.manager")
pytest.importorskip("ipykernel")

TIMEOUT_S = 60

SETUP = """
import tempfile, threading, labctl
from labctl.engine import Listener
store = labctl.open_store(f"sqlite:///{tempfile.mkdtemp()}/kernel.db")
smu = labctl.connect("sim://keithley2450?device=resistor&R=1e7")
IV = dict(frequencies_hz=[4, 8], cycles=1, points_per_cycle=40)

class Gate(Listener):
    def __init__(self):
        self.reached, self.engine = threading.Event(), None
    def on_chunk(self, chunk):
        if not self.reached.is_set():
            self.reached.set()
            if threading.current_thread() is threading.main_thread():
                print("HELD", flush=True)
            assert self.engine.abort_event.wait(60)

def outcome(run_id):
    run = store.run(run_id)
    print(run["status"], run["n_points"], smu.transport.query(":OUTP?").strip())
"""


@pytest.fixture(scope="module")
def kernel():
    km, kc = jupyter_client.start_new_kernel(kernel_name="python3")
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kernel, code: str, interrupt_on: str | None = None) -> tuple[str, list[str]]:
    """Run a cell; interrupt the kernel when its output shows ``interrupt_on``. Returns the
    cell's printed text and the names of the errors it ended with."""
    km, kc = kernel
    msg_id = kc.execute(code)
    text, errors = [], []
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT_S)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text.append(content["text"])
            if interrupt_on is not None and interrupt_on in content["text"]:
                km.interrupt_kernel()
                interrupt_on = None
        elif kind == "error":
            errors.append(content["ename"])
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(text), errors


def test_interrupting_wait_in_a_kernel_aborts_to_safe_state(kernel):
    assert execute(kernel, SETUP) == ("", [])
    start = (
        "g = Gate()\n"
        'h = labctl.start("iv_hysteresis", smu, sample="c", max_v=1.5, max_i=1e-6, '
        "store=store, listeners=[g], **IV)\n"
        "g.engine = h.engine\n"
        "print(h.status)"
    )
    assert execute(kernel, start) == ("starting\n", [])  # the cell returned at once
    text, errors = execute(
        kernel, 'assert g.reached.wait(60)\nprint("WAITING")\nh.wait()', "WAITING"
    )
    assert text == "WAITING\n" and errors == ["RunInterrupted"]
    assert execute(kernel, "print(h.status); outcome(h.run_id)") == ("aborted\naborted 40 0\n", [])


def test_interrupting_labctl_run_in_a_kernel_aborts_to_safe_state(kernel):
    assert execute(kernel, SETUP)[1] == []
    cell = (
        "from labctl.engine import RunEngine\n"
        "g = Gate(); g.engine = RunEngine(store, [g])\n"
        "try:\n"
        '    labctl.run("iv_hysteresis", smu, sample="c", max_v=1.5, max_i=1e-6, store=store,\n'
        "               engine=g.engine, **IV)\n"
        "except KeyboardInterrupt as stop:\n"
        "    outcome(stop.result.run_id)\n"
        "    raise\n"
    )
    text, errors = execute(kernel, cell, "HELD")
    assert errors == ["RunInterrupted"]
    assert text.endswith("aborted 40 0\n")
