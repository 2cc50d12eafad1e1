"""halo._core.SchedulerCore: validation, every state transition, priority order, the fail cascade,
requeueing, a randomized comparison with a pure-Python model of the same rules, and a 170k-node
batch drained to the end."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from halo._core import SchedulerCore, SchedulerStateError
from hypothesis import given, settings
from hypothesis import strategies as st

PENDING, READY, RUNNING = SchedulerCore.PENDING, SchedulerCore.READY, SchedulerCore.RUNNING
DONE, FAILED, CANCELLED = SchedulerCore.DONE, SchedulerCore.FAILED, SchedulerCore.CANCELLED
TERMINAL = (DONE, FAILED, CANCELLED)


def csr(upstreams: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(upstreams) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(u) for u in upstreams])
    indices = np.array([u for us in upstreams for u in us], dtype=np.int32)
    return offsets, indices


def build(upstreams: list[list[int]], queue=None, priority=None, **kwargs) -> SchedulerCore:
    n = len(upstreams)
    offsets, indices = csr(upstreams)
    queue = np.zeros(n, dtype=np.int32) if queue is None else np.asarray(queue, dtype=np.int32)
    priority = np.arange(n, dtype=np.int64) if priority is None else np.asarray(priority, dtype=np.int64)
    return SchedulerCore(offsets, indices, queue, priority, **kwargs)


# 0 -> {1, 2} -> 3 -> 4: node 3 waits for both arms of the diamond.
DIAMOND = [[], [0], [0], [1, 2], [3]]


# --- validation -----------------------------------------------------------------------------


def i64(*v):
    return np.array(v, dtype=np.int64)


def i32(*v):
    return np.array(v, dtype=np.int32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((2, 2), dtype=np.int64), i32(), i32(0), i64(0)), "upstream_offsets must be 1-D, got 2-D"),
        ((i64(), i32(), i32(), i64()), r"upstream_offsets must have n \+ 1 >= 1 entries"),
        ((i64(0, 0, 0), i32(), i32(0), i64(0, 0)), r"queue has 1 entries, expected n = 2"),
        ((i64(0, 0, 0), i32(), i32(0, 0), i64(0)), r"priority has 1 entries, expected n = 2"),
        ((i64(1, 1), i32(0), i32(0), i64(0)), r"upstream_offsets\[0\] must be 0, got 1"),
        (
            (i64(0, 2, 1, 2), i32(1, 2), i32(0, 0, 0), i64(0, 0, 0)),
            r"non-decreasing: upstream_offsets\[2\] = 1 < upstream_offsets\[1\] = 2",
        ),
        (
            (i64(0, 0, 1), i32(0, 0), i32(0, 0), i64(0, 0)),
            r"upstream_offsets\[-1\] = 1 must equal len\(upstream_indices\) = 2",
        ),
        (
            (i64(0, 0, 1), i32(2), i32(0, 0), i64(0, 0)),
            r"upstream_indices\[0\] = 2 \(an upstream of node 1\) is out of range \[0, 2\)",
        ),
        (
            (i64(0, 0, 1), i32(-1), i32(0, 0), i64(0, 0)),
            r"upstream_indices\[0\] = -1 \(an upstream of node 1\) is out of range",
        ),
        ((i64(0, 0, 2), i32(0, 1), i32(0, 0), i64(0, 0)), r"node 1 depends on itself \(upstream_indices\[1\]\)"),
        ((i64(0, 0, 0), i32(), i32(0, -3), i64(0, 0)), r"queue\[1\] = -3 is negative"),
        ((i64(0, 0), np.array([], dtype=np.int64), i64(2**31), i64(0)), r"queue\[0\] = 2147483648 does not fit int32"),
    ],
)
def test_malformed_input_is_a_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        SchedulerCore(*args)


def test_num_queues_below_the_largest_queue_is_rejected():
    with pytest.raises(ValueError, match=r"num_queues = 2 but queue holds 2, which needs at least 3"):
        build([[], []], queue=[0, 2], num_queues=2)
    with pytest.raises(ValueError, match=r"num_queues must be >= 0, or -1"):
        build([[]], num_queues=-2)


def test_non_integer_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="priority must have an integer dtype, got float64"):
        SchedulerCore(i64(0, 0), i32(), i32(0), np.zeros(1))


def cycle_in_message(message: str) -> list[int]:
    match = re.search(r"dependency cycle through node (\d+): ([\d >-]+) \(each node waits", message)
    assert match, message
    nodes = [int(x) for x in match.group(2).split(" -> ")]
    assert nodes[0] == nodes[-1] == int(match.group(1))
    return nodes


@pytest.mark.parametrize(
    "upstreams",
    [
        [[1], [0]],  # two-node loop
        [[], [0, 3], [1], [2], [3]],  # 1 -> 2 -> 3 -> 1, below an entry node, above a tail
        [[], [0], [1, 5], [2], [3], [4], [5]],  # 2 -> 3 -> 4 -> 5 -> 2 with node 6 hanging below
    ],
)
def test_cycle_names_a_node_on_it(upstreams):
    with pytest.raises(ValueError) as info:
        build(upstreams)
    cycle = cycle_in_message(str(info.value))
    for before, after in zip(cycle, cycle[1:], strict=False):
        assert before in upstreams[after], (before, after, str(info.value))


def test_long_cycle_message_is_truncated():
    n = 40
    with pytest.raises(ValueError, match=r"-> \.\.\. \(40 nodes\)"):
        build([[(v - 1) % n] for v in range(n)])


def test_other_integer_inputs_are_converted():
    core = SchedulerCore([0, 0, 1], [0], [0, 1], [5, 5])  # plain lists
    assert core.num_nodes == 2 and core.num_queues == 2
    core = SchedulerCore(
        np.array([0, 0, 1], dtype=np.int32), np.array([0], dtype=np.uint8), np.array([0, 0], dtype=np.int64), i32(0, 0)
    )
    assert list(core.states()) == [READY, PENDING]


def test_empty_graph_is_finished():
    core = SchedulerCore(i64(0), i32(), i32(), i64())
    assert core.num_nodes == 0 and core.num_queues == 0 and core.finished and core.remaining == 0


# --- transitions ----------------------------------------------------------------------------


def test_initial_states_and_counters():
    core = build(DIAMOND, queue=[0, 1, 1, 0, 2])
    assert list(core.states()) == [READY, PENDING, PENDING, PENDING, PENDING]
    assert core.states().dtype == np.int8
    assert (core.num_nodes, core.num_queues, core.num_edges) == (5, 3, 5)
    assert (core.remaining, core.running, core.finished) == (5, 0, False)
    assert [core.ready_count(q) for q in range(3)] == [1, 0, 0]
    assert SchedulerCore.STATE_NAMES[core.state(0)] == "READY"
    assert "num_nodes=5" in repr(core)


def test_states_is_a_copy():
    core = build(DIAMOND)
    states = core.states()
    states[:] = DONE
    assert core.state(0) == READY


def test_lifecycle_pop_complete_promote():
    core = build(DIAMOND, queue=[0, 1, 1, 0, 0])
    popped = core.pop(0)
    assert popped.dtype == np.int32 and list(popped) == [0]
    assert core.state(0) == RUNNING and core.running == 1 and core.ready_count(0) == 0
    promoted = core.complete(0)
    assert promoted.dtype == np.int32 and list(promoted) == [1, 2]
    assert core.state(0) == DONE and core.running == 0 and core.remaining == 4
    assert core.ready_count(1) == 2
    assert list(core.complete(core.pop(1, 1))) == []  # node 3 still waits for node 2
    assert list(core.complete(core.pop(1))) == [3]
    assert list(core.complete(core.pop(0))) == [4]
    assert list(core.complete(core.pop(0))) == []
    assert core.finished and core.running == 0 and list(core.states()) == [DONE] * 5


def test_complete_accepts_int_list_and_arrays():
    core = build([[], [], [], [], []])
    assert list(core.complete(0)) == []
    assert list(core.complete([1])) == []
    assert list(core.complete(np.array([2], dtype=np.int64))) == []
    assert list(core.complete(np.array([3], dtype=np.int32))) == []
    assert list(core.complete(np.array([4], dtype=np.uint16))) == []
    assert list(core.complete([])) == []
    assert core.finished


def test_complete_from_pending_records_resumed_work():
    core = build(DIAMOND)
    assert list(core.complete([1])) == []  # from PENDING: its upstream 0 never ran here
    assert core.state(1) == DONE and core.state(0) == READY
    assert list(core.complete(core.pop(0))) == [2]  # 1 is already DONE, so only 2 is promoted
    assert list(core.complete([2])) == [3]  # from READY


def test_complete_from_ready_leaves_the_queue():
    core = build([[], [], []], queue=[0, 0, 0])
    core.complete([1])
    assert core.ready_count(0) == 2
    assert list(core.pop(0)) == [0, 2]


def test_promoted_then_completed_in_one_call_is_not_reported():
    core = build([[], [0], [1]])
    assert list(core.complete([0, 1])) == [2]
    assert core.state(1) == DONE


@pytest.mark.parametrize("how", ["complete", "fail"])
def test_completing_a_terminal_node_raises_and_names_it(how):
    core = build(DIAMOND)
    getattr(core, how)(0)
    name = "DONE" if how == "complete" else "FAILED"
    with pytest.raises(SchedulerStateError, match=f"cannot complete node 0: it is {name}"):
        core.complete([0])
    with pytest.raises(RuntimeError, match=f"cannot fail node 0: it is {name}"):
        core.fail(0)


def test_completing_a_cancelled_node_raises():
    core = build(DIAMOND)
    core.fail(0)
    with pytest.raises(SchedulerStateError, match=r"cannot complete node 3: it is CANCELLED \(an upstream failed\)"):
        core.complete(3)


def test_bad_batch_changes_nothing():
    core = build([[], [], [0]])
    before = core.states()
    with pytest.raises(SchedulerStateError, match="node 1 is listed twice in one complete"):
        core.complete([0, 1, 1])
    with pytest.raises(ValueError, match=r"node 7 out of range \[0, 3\)"):
        core.complete([0, 7])
    with pytest.raises(ValueError, match=r"node -1 out of range"):
        core.complete(np.array([0, -1], dtype=np.int32))
    core.complete([1])
    with pytest.raises(SchedulerStateError, match="cannot complete node 1: it is DONE"):
        core.complete([0, 1])
    assert list(core.states()) == [before[0], DONE, before[2]] and core.ready_count(0) == 1
    with pytest.raises(TypeError):
        core.complete([0.5])


def test_pop_arguments():
    core = build([[], [], []])
    assert list(core.pop(0, 0)) == []
    with pytest.raises(ValueError, match=r"queue 1 out of range \[0, 1\)"):
        core.pop(1)
    with pytest.raises(ValueError, match="max_items must be >= 0, or -1 for all, got -2"):
        core.pop(0, -2)
    with pytest.raises(ValueError, match="queue -1 out of range"):
        core.ready_count(-1)
    with pytest.raises(ValueError, match=r"node 3 out of range \[0, 3\)"):
        core.state(3)


# --- priority order -------------------------------------------------------------------------


def test_pop_hands_out_by_priority_then_id():
    core = build([[]] * 6, priority=[5, 1, 3, 1, 0, 3])
    assert list(core.pop(0, 2)) == [4, 1]
    assert list(core.pop(0, 3)) == [3, 2, 5]
    assert list(core.pop(0)) == [0]
    assert list(core.pop(0)) == []


def test_promoted_nodes_join_the_order():
    core = build([[], [], [0], [0]], priority=[0, 5, 9, 1])
    core.complete(core.pop(0, 1))  # node 0 promotes 2 (priority 9) and 3 (priority 1)
    assert list(core.pop(0)) == [3, 1, 2]


def test_set_priority():
    core = build([[], [], [], [0]], priority=[0, 1, 2, 3])
    core.set_priority(2, -1)  # READY: moves to the front
    core.set_priority(3, -5)  # PENDING: takes effect when promoted
    assert list(core.pop(0, 1)) == [2]
    core.complete([2])
    core.complete(core.pop(0, 1))  # node 0
    assert list(core.pop(0)) == [3, 1]
    with pytest.raises(SchedulerStateError, match="cannot set the priority of node 3: it is RUNNING"):
        core.set_priority(3, 0)
    core.complete([3])
    with pytest.raises(SchedulerStateError, match="it is DONE"):
        core.set_priority(3, 0)


def test_repeated_priority_changes_keep_one_live_entry():
    core = build([[]] * 3)
    for p in range(500):  # enough stale entries to force compaction
        core.set_priority(1, 1000 - p)
    assert core.ready_count(0) == 3
    assert list(core.pop(0)) == [0, 2, 1]


# --- duplicate upstream entries -------------------------------------------------------------


def test_duplicate_upstream_entries():
    core = build([[], [], [0, 0, 1, 0]])
    assert core.num_edges == 4
    assert list(core.complete([0])) == []
    assert core.state(2) == PENDING
    assert list(core.complete([1])) == [2]
    core = build([[], [0, 0]])
    assert list(core.complete([0])) == [1]
    cancelled = build([[], [0, 0], [1, 1]]).fail(0)
    assert list(cancelled) == [1, 2]


# --- fail cascade ---------------------------------------------------------------------------


def test_fail_cascades_over_the_diamond():
    core = build(DIAMOND)
    core.complete(core.pop(0))
    running = core.pop(0)
    assert list(running) == [1, 2]
    cancelled = core.fail(1)
    assert cancelled.dtype == np.int32 and list(cancelled) == [3, 4]
    assert list(core.states()) == [DONE, FAILED, RUNNING, CANCELLED, CANCELLED]
    assert core.remaining == 1 and core.running == 1
    assert list(core.complete([2])) == []  # its successor 3 is cancelled
    assert core.finished


def test_fail_from_ready_leaves_the_queue():
    core = build([[], [], [0]])
    assert list(core.fail(0)) == [2]
    assert core.ready_count(0) == 1 and list(core.pop(0)) == [1]


def test_fail_passes_through_done_nodes():
    core = build(DIAMOND)
    core.complete([1, 3])  # recorded from a journal while 0 is still pending
    assert list(core.fail(0)) == [2, 4]
    assert list(core.states()) == [FAILED, DONE, CANCELLED, DONE, CANCELLED]


def test_running_node_cancelled_absorbs_one_late_report():
    """A node cancelled while RUNNING: the worker's late complete() or fail() is swallowed once."""
    resumed = build([[], [0], [1]])
    resumed.complete([1])  # journal says 1 finished; its child 2 is ready and handed out
    assert list(resumed.pop(0)) == [0, 2]
    assert list(resumed.fail(0)) == [2]
    assert resumed.state(2) == CANCELLED and resumed.running == 0 and resumed.finished
    assert list(resumed.complete([2])) == []  # the late report, ignored
    with pytest.raises(SchedulerStateError, match="cannot complete node 2: it is CANCELLED"):
        resumed.complete([2])  # a second one is a bug
    late_fail = build([[], [0], [1]])
    late_fail.complete([1])
    late_fail.pop(0)
    late_fail.fail(0)
    assert list(late_fail.fail(2)) == []  # a late failure report is absorbed the same way
    with pytest.raises(SchedulerStateError, match="cannot fail node 2: it is CANCELLED"):
        late_fail.fail(2)


def test_fail_of_a_pending_node():
    core = build(DIAMOND)
    assert list(core.fail(3)) == [4]
    assert core.state(3) == FAILED and core.remaining == 3


# --- requeue --------------------------------------------------------------------------------


def test_requeue_moves_ready_and_pending_nodes():
    core = build([[], [], [0]], queue=[0, 0, 0], num_queues=3)
    assert core.num_queues == 3
    core.requeue(1, 2)  # READY
    core.requeue(2, 1)  # PENDING: lands in queue 1 once promoted
    assert [core.ready_count(q) for q in range(3)] == [1, 0, 1]
    assert list(core.pop(0)) == [0]
    assert list(core.pop(2)) == [1]
    assert list(core.complete([0])) == [2]
    assert core.ready_count(1) == 1 and list(core.pop(1)) == [2]


def test_requeue_back_and_forth_hands_out_once():
    core = build([[], []], num_queues=2)
    for _ in range(100):
        core.requeue(0, 1)
        core.requeue(0, 0)
    core.requeue(0, 0)  # same queue: nothing to do
    assert core.ready_count(0) == 2 and core.ready_count(1) == 0
    assert list(core.pop(0)) == [0, 1]
    assert list(core.pop(1)) == []


def test_requeue_errors():
    core = build([[], []], num_queues=2)
    core.pop(0, 1)
    with pytest.raises(SchedulerStateError, match="cannot requeue node 0: it is RUNNING"):
        core.requeue(0, 1)
    core.complete([0])
    with pytest.raises(SchedulerStateError, match="cannot requeue node 0: it is DONE"):
        core.requeue(0, 1)
    with pytest.raises(ValueError, match=r"queue 2 out of range \[0, 2\)"):
        core.requeue(1, 2)
    with pytest.raises(ValueError, match="node 5 out of range"):
        core.requeue(5, 0)


# --- randomized comparison with a pure-Python model -----------------------------------------


class Model:
    """The same rules, written for clarity: a node is READY once every upstream is DONE."""

    def __init__(self, upstreams, queue, priority, num_queues):
        self.up = upstreams
        self.down = [sorted({v for v, us in enumerate(upstreams) if u in us}) for u in range(len(upstreams))]
        self.queue, self.priority, self.num_queues = list(queue), list(priority), num_queues
        self.state = [PENDING if us else READY for us in upstreams]
        self.absorb = [False] * len(upstreams)

    def check_node(self, v):
        if not 0 <= v < len(self.state):
            raise ValueError

    def check_queue(self, q):
        if not 0 <= q < self.num_queues:
            raise ValueError

    def ready(self, q):
        return sorted((self.priority[v], v) for v, s in enumerate(self.state) if s == READY and self.queue[v] == q)

    def pop(self, q, k):
        self.check_queue(q)
        if k < -1:
            raise ValueError
        taken = [v for _, v in self.ready(q)][: None if k == -1 else k]
        for v in taken:
            self.state[v] = RUNNING
        return taken

    def complete(self, ids):
        for i, v in enumerate(ids):  # the first bad id, in order, decides the error
            self.check_node(v)
            if v in ids[:i]:
                raise SchedulerStateError
            if self.state[v] in (DONE, FAILED) or (self.state[v] == CANCELLED and not self.absorb[v]):
                raise SchedulerStateError
        promoted = []
        for v in ids:
            if self.state[v] == CANCELLED:
                self.absorb[v] = False
                continue
            self.state[v] = DONE
            for w in self.down[v]:
                if self.state[w] == PENDING and all(self.state[u] == DONE for u in self.up[w]):
                    self.state[w] = READY
                    promoted.append(w)
        return sorted(w for w in promoted if self.state[w] == READY)

    def fail(self, v):
        self.check_node(v)
        if self.state[v] == CANCELLED and self.absorb[v]:
            self.absorb[v] = False
            return []
        if self.state[v] in TERMINAL:
            raise SchedulerStateError
        self.state[v] = FAILED
        below, frontier = set(), [v]
        while frontier:
            for w in self.down[frontier.pop()]:
                if w not in below:
                    below.add(w)
                    frontier.append(w)
        cancelled = sorted(w for w in below if self.state[w] not in TERMINAL)
        for w in cancelled:
            self.absorb[w] = self.state[w] == RUNNING
            self.state[w] = CANCELLED
        return cancelled

    def requeue(self, v, q):
        self.check_node(v)
        self.check_queue(q)
        if self.state[v] not in (PENDING, READY):
            raise SchedulerStateError
        self.queue[v] = q

    def set_priority(self, v, p):
        self.check_node(v)
        if self.state[v] not in (PENDING, READY):
            raise SchedulerStateError
        self.priority[v] = p


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 10))
    # Upstreams drawn below each node in topological order, then ids shuffled.
    topo = [draw(st.lists(st.integers(0, max(v - 1, 0)), max_size=3 if v else 0)) for v in range(n)]
    perm = draw(st.permutations(range(n)))
    upstreams = [[] for _ in range(n)]
    for v, us in enumerate(topo):
        upstreams[perm[v]] = [perm[u] for u in us]
    queue = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    priority = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    num_queues = max(queue) + 1 + draw(st.integers(0, 1))
    return upstreams, queue, priority, num_queues


def outcome(fn, *args):
    try:
        result = fn(*args)
    except (ValueError, SchedulerStateError) as e:
        return type(e)
    return None if result is None else [int(v) for v in result]


@settings(max_examples=400, deadline=None)
@given(graph=graphs(), data=st.data())
def test_matches_the_python_model(graph, data):
    upstreams, queue, priority, num_queues = graph
    n = len(upstreams)
    core = build(upstreams, queue=queue, priority=priority, num_queues=num_queues)
    model = Model(upstreams, queue, priority, num_queues)
    node, q = st.integers(-1, n), st.integers(-1, num_queues)
    for _ in range(data.draw(st.integers(1, 25))):
        op = data.draw(st.sampled_from(["pop", "pop", "complete", "complete", "fail", "requeue", "set_priority"]))
        if op == "pop":
            args = (data.draw(q), data.draw(st.integers(-2, 3)))
        elif op == "complete":
            args = (data.draw(st.lists(node, max_size=4)),)
        elif op == "fail":
            args = (data.draw(node),)
        elif op == "requeue":
            args = (data.draw(node), data.draw(q))
        else:
            args = (data.draw(node), data.draw(st.integers(-2, 4)))
        assert outcome(getattr(core, op), *args) == outcome(getattr(model, op), *args), (op, args)
        assert list(core.states()) == model.state, (op, args)
        assert [core.ready_count(i) for i in range(num_queues)] == [len(model.ready(i)) for i in range(num_queues)]
        assert core.remaining == sum(s not in TERMINAL for s in model.state)
        assert core.running == model.state.count(RUNNING)


# --- scale ----------------------------------------------------------------------------------

ROWS, TEMPLATE_NODES, WORKERS = 10_000, 17, 4
GROUP = 100  # rows sharing one consolidated node, as identical signatures do


def batch_graph(rows: int = ROWS) -> tuple[np.ndarray, ...]:
    """rows copies of a 17-node workflow (~30 dependency entries each) whose node 3 also reads a node
    shared by a group of rows. llm nodes (odd) go to worker row % 4, tools (even) to the pool."""
    template = [[]] + [sorted({k - 1, k // 2, max(k - 3, 0)} - {k}) for k in range(1, TEMPLATE_NODES)]
    counts = np.array([len(t) + (k == 3) for k, t in enumerate(template)], dtype=np.int64)
    row = np.arange(rows, dtype=np.int64)
    base = row * TEMPLATE_NODES
    upstream = []
    for k, t in enumerate(template):
        cols = [base + u for u in t]
        if k == 3:
            cols.append((row - row % GROUP) * TEMPLATE_NODES)  # node 0 of the group's first row
        upstream.append(np.stack(cols, axis=1) if cols else np.empty((rows, 0), dtype=np.int64))
    per_row = np.concatenate(upstream, axis=1)  # (rows, entries per row), row-major = node order
    indices = per_row.ravel().astype(np.int32)
    offsets = np.zeros(rows * TEMPLATE_NODES + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.tile(counts, rows))
    k = np.tile(np.arange(TEMPLATE_NODES), rows)
    queue = np.where(k % 2 == 1, np.repeat(row % WORKERS, TEMPLATE_NODES), WORKERS).astype(np.int32)
    priority = k.astype(np.int64) * (1 << 32) + np.arange(rows * TEMPLATE_NODES)
    return offsets, indices, queue, priority


def drain(core: SchedulerCore, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Pop and complete everything, batch nodes per queue per round. Returns the step at which each
    node was handed out and the step at which it completed."""
    popped_at = np.full(core.num_nodes, -1, dtype=np.int64)
    done_at = np.full(core.num_nodes, -1, dtype=np.int64)
    handed = np.zeros(core.num_nodes, dtype=np.int64)
    step = 0
    while not core.finished:
        progressed = False
        for q in range(core.num_queues):
            ids = core.pop(q, batch)
            if len(ids) == 0:
                continue
            progressed = True
            handed[ids] += 1
            popped_at[ids] = step
            core.complete(ids)
            done_at[ids] = step
            step += 1
        assert progressed, "nothing ready but work remains"
    assert (handed == 1).all(), "every node handed out exactly once"
    return popped_at, done_at


def test_batch_of_170k_nodes_drains_completely():
    offsets, indices, queue, priority = batch_graph()
    core = SchedulerCore(offsets, indices, queue, priority)
    assert core.num_nodes == ROWS * TEMPLATE_NODES and core.num_edges == len(indices) > 290_000
    popped_at, done_at = drain(core, batch=2048)
    assert (core.states() == DONE).all() and core.remaining == 0 and core.running == 0
    # No node was handed out before all its inputs were done.
    downstream = np.repeat(np.arange(core.num_nodes), np.diff(offsets))
    assert (done_at[indices] < popped_at[downstream]).all()


def test_overlapping_call_from_another_thread_is_refused_not_corrupting():
    """complete() of a large batch drops the GIL; a call from another thread meanwhile raises."""
    offsets, indices, queue, priority = batch_graph(rows=2000)
    core = SchedulerCore(offsets, indices, queue, priority)
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (core.complete(np.arange(core.num_nodes, dtype=np.int32)), finished.set()))
    refused = []
    worker.start()
    while not finished.is_set():
        try:
            core.ready_count(0)
        except RuntimeError as e:
            refused.append(str(e))
    worker.join()
    assert all("called from two threads at once" in m for m in refused)
    assert (core.states() == DONE).all() and core.finished
