// SchedulerCore implementation: validation and CSR successor lists at construction, per-queue
// binary heaps with lazy deletion, promotion on complete() and the cancel cascade of fail(). The
// Python binding is in scheduler_core_binding.cpp.
#include "scheduler_core.h"

#include <algorithm>
#include <limits>
#include <string>

namespace halo {

namespace {

// Orders a std heap so that the smallest (priority, node) is on top.
template <typename Entry>
bool later(const Entry& a, const Entry& b) {
  return a.priority != b.priority ? a.priority > b.priority : a.node > b.node;
}

std::string str(int64_t v) { return std::to_string(v); }

constexpr int64_t kMaxNodes = std::numeric_limits<int32_t>::max();
constexpr size_t kCycleShown = 8;  // nodes of a cycle spelled out in the error message
// pop() selects and sorts instead of popping one by one when it takes at least 1/this of the heap.
constexpr int64_t kBulkPopFraction = 8;

}  // namespace

// Rejects a second call while one is under way (only possible while a call runs without the GIL).
class SchedulerCore::CallGuard {
 public:
  explicit CallGuard(const SchedulerCore& core) : busy_(core.busy_) {
    if (busy_.exchange(true, std::memory_order_acquire)) {
      throw std::runtime_error(
          "SchedulerCore called from two threads at once; it is not thread-safe, drive it from one thread");
    }
  }
  ~CallGuard() { busy_.store(false, std::memory_order_release); }
  CallGuard(const CallGuard&) = delete;
  CallGuard& operator=(const CallGuard&) = delete;

 private:
  std::atomic<bool>& busy_;
};

const char* SchedulerCore::state_name(int8_t state) {
  switch (state) {
    case kPending: return "PENDING";
    case kReady: return "READY";
    case kRunning: return "RUNNING";
    case kDone: return "DONE";
    case kFailed: return "FAILED";
    case kCancelled: return "CANCELLED";
    default: return "UNKNOWN";
  }
}

SchedulerCore::SchedulerCore(const int64_t* upstream_offsets, size_t num_offsets,
                             const int32_t* upstream_indices, size_t num_indices, const int32_t* queue,
                             size_t queue_len, const int64_t* priority, size_t priority_len,
                             int64_t num_queues) {
  if (num_offsets < 1) {
    throw std::invalid_argument("upstream_offsets must have n + 1 >= 1 entries (n nodes), got 0");
  }
  const int64_t n = static_cast<int64_t>(num_offsets) - 1;
  if (n > kMaxNodes) throw std::invalid_argument("at most " + str(kMaxNodes) + " nodes, got " + str(n));
  if (static_cast<int64_t>(queue_len) != n) {
    throw std::invalid_argument("queue has " + str(queue_len) + " entries, expected n = " + str(n) +
                                " (len(upstream_offsets) - 1)");
  }
  if (static_cast<int64_t>(priority_len) != n) {
    throw std::invalid_argument("priority has " + str(priority_len) + " entries, expected n = " + str(n) +
                                " (len(upstream_offsets) - 1)");
  }
  if (upstream_offsets[0] != 0) {
    throw std::invalid_argument("upstream_offsets[0] must be 0, got " + str(upstream_offsets[0]));
  }
  for (int64_t i = 1; i <= n; ++i) {
    if (upstream_offsets[i] < upstream_offsets[i - 1]) {
      throw std::invalid_argument("upstream_offsets must be non-decreasing: upstream_offsets[" + str(i) +
                                  "] = " + str(upstream_offsets[i]) + " < upstream_offsets[" + str(i - 1) +
                                  "] = " + str(upstream_offsets[i - 1]));
    }
  }
  if (upstream_offsets[n] != static_cast<int64_t>(num_indices)) {
    throw std::invalid_argument("upstream_offsets[-1] = " + str(upstream_offsets[n]) +
                                " must equal len(upstream_indices) = " + str(num_indices));
  }
  int64_t max_queue = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (queue[i] < 0) throw std::invalid_argument("queue[" + str(i) + "] = " + str(queue[i]) + " is negative");
    max_queue = std::max<int64_t>(max_queue, queue[i]);
  }
  if (num_queues >= 0 && num_queues <= max_queue) {
    throw std::invalid_argument("num_queues = " + str(num_queues) + " but queue holds " + str(max_queue) +
                                ", which needs at least " + str(max_queue + 1));
  }
  const int64_t queues = num_queues >= 0 ? num_queues : max_queue + 1;

  // Successors as CSR, each list ascending (filled in node order), repeats kept.
  successor_offsets_.assign(static_cast<size_t>(n) + 1, 0);
  waiting_.resize(static_cast<size_t>(n));
  for (int64_t v = 0; v < n; ++v) {
    const int64_t entries = upstream_offsets[v + 1] - upstream_offsets[v];
    if (entries > std::numeric_limits<int32_t>::max()) {
      throw std::invalid_argument("node " + str(v) + " has " + str(entries) + " upstream entries, at most " +
                                  str(std::numeric_limits<int32_t>::max()));
    }
    waiting_[v] = static_cast<int32_t>(entries);
    for (int64_t k = upstream_offsets[v]; k < upstream_offsets[v + 1]; ++k) {
      const int64_t u = upstream_indices[k];
      if (u < 0 || u >= n) {
        throw std::invalid_argument("upstream_indices[" + str(k) + "] = " + str(u) + " (an upstream of node " +
                                    str(v) + ") is out of range [0, " + str(n) + ")");
      }
      if (u == v) {
        throw std::invalid_argument("node " + str(v) + " depends on itself (upstream_indices[" + str(k) + "])");
      }
      ++successor_offsets_[u + 1];
    }
  }
  for (int64_t u = 0; u < n; ++u) successor_offsets_[u + 1] += successor_offsets_[u];
  successors_.resize(num_indices);
  {
    std::vector<int64_t> cursor(successor_offsets_.begin(), successor_offsets_.end() - 1);
    for (int64_t v = 0; v < n; ++v) {
      for (int64_t k = upstream_offsets[v]; k < upstream_offsets[v + 1]; ++k) {
        successors_[cursor[upstream_indices[k]]++] = static_cast<NodeId>(v);
      }
    }
  }

  // Kahn's algorithm: a node never released lies on a cycle or below one.
  {
    std::vector<int32_t> left(waiting_);
    std::vector<NodeId> frontier;
    for (int64_t v = 0; v < n; ++v) {
      if (left[v] == 0) frontier.push_back(static_cast<NodeId>(v));
    }
    int64_t released = 0;
    while (!frontier.empty()) {
      const NodeId u = frontier.back();
      frontier.pop_back();
      ++released;
      for (int64_t k = successor_offsets_[u]; k < successor_offsets_[u + 1]; ++k) {
        if (--left[successors_[k]] == 0) frontier.push_back(successors_[k]);
      }
    }
    if (released < n) {
      // Every unreleased node has an unreleased upstream: walking those must close a loop.
      int64_t cur = std::find_if(left.begin(), left.end(), [](int32_t c) { return c > 0; }) - left.begin();
      std::vector<int64_t> position(static_cast<size_t>(n), -1);
      std::vector<int64_t> path;  // path[j + 1] is an upstream of path[j]
      while (position[cur] < 0) {
        position[cur] = static_cast<int64_t>(path.size());
        path.push_back(cur);
        for (int64_t k = upstream_offsets[cur]; k < upstream_offsets[cur + 1]; ++k) {
          if (left[upstream_indices[k]] > 0) {
            cur = upstream_indices[k];
            break;
          }
        }
      }
      std::vector<int64_t> cycle(path.begin() + position[cur], path.end());
      std::reverse(cycle.begin(), cycle.end());  // now each node waits for the one before it
      std::string shown;
      for (size_t i = 0; i < std::min(cycle.size(), kCycleShown); ++i) shown += str(cycle[i]) + " -> ";
      shown += cycle.size() > kCycleShown ? "... (" + str(cycle.size()) + " nodes)" : str(cycle[0]);
      throw std::invalid_argument("dependency cycle through node " + str(cycle[0]) + ": " + shown +
                                  " (each node waits for the one before it)");
    }
  }

  state_.assign(static_cast<size_t>(n), kPending);
  queue_.assign(queue, queue + n);
  priority_.assign(priority, priority + n);
  stamp_.assign(static_cast<size_t>(n), 0);
  absorb_.assign(static_cast<size_t>(n), 0);
  mark_.assign(static_cast<size_t>(n), 0);
  heaps_.resize(static_cast<size_t>(queues));
  ready_count_.assign(static_cast<size_t>(queues), 0);
  remaining_ = n;
  for (int64_t v = 0; v < n; ++v) {
    if (waiting_[v] == 0) {
      state_[v] = kReady;
      heaps_[queue_[v]].push_back({priority_[v], static_cast<NodeId>(v), 0});
      ++ready_count_[queue_[v]];
    }
  }
  for (auto& heap : heaps_) std::make_heap(heap.begin(), heap.end(), later<Entry>);
}

void SchedulerCore::check_node(int64_t node) const {
  if (node < 0 || node >= num_nodes()) {
    throw std::invalid_argument("node " + str(node) + " out of range [0, " + str(num_nodes()) + ")");
  }
}

void SchedulerCore::check_queue(int64_t queue) const {
  if (queue < 0 || queue >= num_queues()) {
    throw std::invalid_argument("queue " + str(queue) + " out of range [0, " + str(num_queues()) + ")");
  }
}

void SchedulerCore::throw_state(NodeId node, const char* action) const {
  std::string msg = std::string("cannot ") + action + " node " + str(node) + ": it is " + state_name(state_[node]);
  if (state_[node] == kCancelled) msg += " (an upstream failed)";
  throw SchedulerStateError(msg);
}

int64_t SchedulerCore::ready_count(int64_t queue) const {
  CallGuard guard(*this);
  check_queue(queue);
  return ready_count_[queue];
}

int8_t SchedulerCore::state(int64_t node) const {
  CallGuard guard(*this);
  check_node(node);
  return state_[node];
}

void SchedulerCore::copy_states(int8_t* out) const {
  CallGuard guard(*this);
  std::copy(state_.begin(), state_.end(), out);
}

void SchedulerCore::push_ready(NodeId node) {
  const int32_t q = queue_[node];
  heaps_[q].push_back({priority_[node], node, ++stamp_[node]});
  std::push_heap(heaps_[q].begin(), heaps_[q].end(), later<Entry>);
}

void SchedulerCore::set_terminal(NodeId node, State state) {
  const int8_t before = state_[node];
  state_[node] = state;
  --remaining_;
  if (before == kReady) {
    --ready_count_[queue_[node]];
    maybe_compact(queue_[node]);
  } else if (before == kRunning) {
    --running_;
  }
}

void SchedulerCore::maybe_compact(int32_t queue) {
  auto& heap = heaps_[queue];
  if (ready_count_[queue] == 0) {
    heap.clear();
    return;
  }
  if (static_cast<int64_t>(heap.size()) <= 2 * ready_count_[queue] + 64) return;
  heap.erase(std::remove_if(heap.begin(), heap.end(), [this](const Entry& e) { return stale(e); }), heap.end());
  std::make_heap(heap.begin(), heap.end(), later<Entry>);
}

uint32_t SchedulerCore::next_mark() {
  if (++epoch_ == 0) {  // wrapped: old marks could collide with the new epochs
    std::fill(mark_.begin(), mark_.end(), 0);
    epoch_ = 1;
  }
  return epoch_;
}

std::vector<SchedulerCore::NodeId> SchedulerCore::pop(int64_t queue, int64_t max_items) {
  // Invariant: each READY node of queue has exactly one live entry in heaps_[queue] (its latest
  // stamp) and ready_count_[queue] counts them; every other entry is stale and skipped.
  CallGuard guard(*this);
  check_queue(queue);
  if (max_items < -1) throw std::invalid_argument("max_items must be >= 0, or -1 for all, got " + str(max_items));
  const int64_t limit = max_items < 0 ? ready_count_[queue] : std::min(max_items, ready_count_[queue]);
  std::vector<NodeId> out;
  out.reserve(static_cast<size_t>(limit));
  auto& heap = heaps_[queue];
  if (limit * kBulkPopFraction >= static_cast<int64_t>(heap.size())) {
    // A large share of the heap: select and sort it at once, cheaper than limit pop_heap calls.
    heap.erase(std::remove_if(heap.begin(), heap.end(), [this](const Entry& e) { return stale(e); }), heap.end());
    const auto mid = heap.begin() + limit;
    const auto earlier = [](const Entry& a, const Entry& b) { return later(b, a); };
    if (mid != heap.end()) std::nth_element(heap.begin(), mid, heap.end(), earlier);
    std::sort(heap.begin(), mid, earlier);
    for (auto it = heap.begin(); it != mid; ++it) out.push_back(it->node);
    heap.erase(heap.begin(), mid);
    std::make_heap(heap.begin(), heap.end(), later<Entry>);
  } else {
    while (static_cast<int64_t>(out.size()) < limit) {
      const Entry top = heap.front();
      std::pop_heap(heap.begin(), heap.end(), later<Entry>);
      heap.pop_back();
      if (!stale(top)) out.push_back(top.node);
    }
  }
  for (const NodeId v : out) state_[v] = kRunning;
  ready_count_[queue] -= limit;
  running_ += limit;
  if (ready_count_[queue] == 0) heap.clear();
  return out;
}

std::vector<SchedulerCore::NodeId> SchedulerCore::complete(const int32_t* ids, size_t n) {
  return complete_ids(ids, n);
}

std::vector<SchedulerCore::NodeId> SchedulerCore::complete(const int64_t* ids, size_t n) {
  return complete_ids(ids, n);
}

template <typename T>
std::vector<SchedulerCore::NodeId> SchedulerCore::complete_ids(const T* ids, size_t n) {
  // Invariant: waiting_[v] of a PENDING node counts its upstream entries not yet DONE; it becomes
  // READY exactly when that reaches 0 (a node completed from PENDING is simply no longer PENDING).
  CallGuard guard(*this);
  // Check everything first, so a bad id leaves the state untouched.
  const uint32_t mark = next_mark();
  for (size_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    check_node(id);
    if (mark_[id] == mark) {
      throw SchedulerStateError("node " + str(id) + " is listed twice in one complete() call");
    }
    mark_[id] = mark;
    const int8_t s = state_[id];
    if (s == kDone || s == kFailed || (s == kCancelled && !absorb_[id])) throw_state(static_cast<NodeId>(id), "complete");
  }
  std::vector<NodeId> promoted;
  for (size_t i = 0; i < n; ++i) {
    const NodeId id = static_cast<NodeId>(ids[i]);
    if (state_[id] == kCancelled) {  // cancelled while running: its late report is absorbed
      absorb_[id] = 0;
      continue;
    }
    set_terminal(id, kDone);
    for (int64_t k = successor_offsets_[id]; k < successor_offsets_[id + 1]; ++k) {
      const NodeId s = successors_[k];
      if (state_[s] == kPending && --waiting_[s] == 0) {
        state_[s] = kReady;
        ++ready_count_[queue_[s]];
        push_ready(s);
        promoted.push_back(s);
      }
    }
  }
  // A node promoted and then completed later in the same call is no longer ready.
  promoted.erase(std::remove_if(promoted.begin(), promoted.end(), [this](NodeId s) { return state_[s] != kReady; }),
                 promoted.end());
  std::sort(promoted.begin(), promoted.end());
  return promoted;
}

std::vector<SchedulerCore::NodeId> SchedulerCore::fail(int64_t node) {
  CallGuard guard(*this);
  check_node(node);
  const NodeId failed = static_cast<NodeId>(node);
  if (state_[failed] == kCancelled && absorb_[failed]) {  // cancelled while running: absorbed
    absorb_[failed] = 0;
    return {};
  }
  if (state_[failed] >= kDone) throw_state(failed, "fail");
  set_terminal(failed, kFailed);
  // Depth-first over all descendants, through DONE nodes too. A FAILED or CANCELLED node is not
  // entered: everything below it was made terminal when it was.
  std::vector<NodeId> cancelled;
  std::vector<NodeId> stack{failed};
  const uint32_t mark = next_mark();
  mark_[failed] = mark;
  while (!stack.empty()) {
    const NodeId u = stack.back();
    stack.pop_back();
    for (int64_t k = successor_offsets_[u]; k < successor_offsets_[u + 1]; ++k) {
      const NodeId s = successors_[k];
      if (mark_[s] == mark) continue;
      mark_[s] = mark;
      if (state_[s] == kFailed || state_[s] == kCancelled) continue;
      if (state_[s] != kDone) {
        absorb_[s] = state_[s] == kRunning;
        set_terminal(s, kCancelled);
        cancelled.push_back(s);
      }
      stack.push_back(s);
    }
  }
  std::sort(cancelled.begin(), cancelled.end());
  return cancelled;
}

void SchedulerCore::requeue(int64_t node, int64_t queue) {
  CallGuard guard(*this);
  check_node(node);
  check_queue(queue);
  const NodeId v = static_cast<NodeId>(node);
  if (state_[v] == kPending) {
    queue_[v] = static_cast<int32_t>(queue);
  } else if (state_[v] == kReady) {
    const int32_t from = queue_[v];
    if (from == queue) return;
    queue_[v] = static_cast<int32_t>(queue);
    ++ready_count_[queue];
    push_ready(v);  // the entry left in the old queue goes stale
    --ready_count_[from];
    maybe_compact(from);
  } else {
    throw_state(v, "requeue");
  }
}

void SchedulerCore::set_priority(int64_t node, int64_t priority) {
  CallGuard guard(*this);
  check_node(node);
  const NodeId v = static_cast<NodeId>(node);
  if (state_[v] == kPending) {
    priority_[v] = priority;
  } else if (state_[v] == kReady) {
    if (priority_[v] == priority) return;
    priority_[v] = priority;
    push_ready(v);  // the old entry goes stale
    maybe_compact(queue_[v]);
  } else {
    throw_state(v, "set the priority of");
  }
}

}  // namespace halo
